"""``cyxwiz job``: submit a training job to the coordinator and follow it (issue 9; SPEC C1, D1, G1).

Every command logs in with the user certificate (``--cert/--key`` or ``CYXWIZ_USER_CERT/KEY``) over
TLS 1.3, verifies the coordinator against ``--ca-bundle`` (``CYXWIZ_CA_BUNDLE``), and prints refusals as
one line: exit 2 for a bad spec or configuration, 3 for authentication/authorization, 4 for not found,
1 for a job that ended badly (failed, refunded, cancelled, disputed), 124 for a wait that timed out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cyxwiz._cli import new_app

if TYPE_CHECKING:
    from cyxwiz.jobs.client import CoordinatorUserClient

app = new_app(help="Submit training jobs to the coordinator, follow them, and view your wallet.")

EXIT_JOB_UNSUCCESSFUL = 1
EXIT_WAIT_TIMEOUT = 124

Opt = typer.Option
Url = Annotated[
    str | None,
    Opt("--coordinator", envvar="CYXWIZ_COORDINATOR_URL", help="Coordinator URL (https://host:port)."),
]
Cert = Annotated[Path | None, Opt("--cert", envvar="CYXWIZ_USER_CERT", help="Your user certificate (PEM).")]
Key = Annotated[Path | None, Opt("--key", envvar="CYXWIZ_USER_KEY", help="Your private key (PEM, 0600).")]
Bundle = Annotated[
    Path | None, Opt("--ca-bundle", envvar="CYXWIZ_CA_BUNDLE", help="CA bundle that signs the coordinator.")
]
Crl = Annotated[Path | None, Opt("--crl", envvar="CYXWIZ_CRL", help="CRL to check the coordinator against.")]
AsJson = Annotated[bool, Opt("--json", help="Print the coordinator's JSON answer instead of a summary.")]
Timeout = Annotated[
    float | None, Opt("--timeout", min=0, help="Give up waiting after this many seconds (exit 124).")
]
Interval = Annotated[float, Opt("--interval", min=0.05, help="Seconds between status polls.")]
Wallet = Annotated[
    Path | None,
    Opt(
        "--wallet",
        envvar="CYXWIZ_WALLET",
        help="Your wallet key file (sealed, 0600); it signs the job's escrow lock here. Passphrase: "
        "CYXWIZ_WALLET_PASSPHRASE or CYXWIZ_WALLET_PASSPHRASE_FILE.",
    ),
]


def _client(
    url: str | None, cert: Path | None, key: Path | None, bundle: Path | None, crl: Path | None
) -> CoordinatorUserClient:
    from cyxwiz.jobs.client import CoordinatorUserClient

    return CoordinatorUserClient.from_options(url=url, cert=cert, key=key, ca_bundle=bundle, crl=crl)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _progress_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    metrics = progress.get("metrics") or {}
    shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, int | float))
    from rich.markup import escape

    # Escaped: server text must not be read as rich markup ("[x]" would vanish or restyle the line).
    return escape(f"{job.get('job_id')} ({job.get('status')})" + (f" {shown}" if shown else ""))


def _follow(
    client: CoordinatorUserClient, job_id: str, *, timeout: float | None, interval: float
) -> dict[str, Any]:
    """Poll until terminal with a rich progress bar on stderr (stdout stays clean for ``--json``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cyxwiz.jobs.client import WaitTimeoutError

    console = Console(stderr=True)
    last_status: list[str | None] = [None]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(job_id, total=None)

        def update(job: dict[str, Any]) -> None:
            progress = job.get("progress") or {}
            step, total = progress.get("step"), progress.get("total")
            if job.get("status") != last_status[0]:
                last_status[0] = job.get("status")
                bar.console.print(f"{job_id}: {last_status[0]}", markup=False, highlight=False)
            bar.update(
                task,
                description=_progress_text(job),
                completed=step if isinstance(step, int) else 0,
                total=total if isinstance(total, int) and total > 0 else None,
            )

        try:
            return client.wait(job_id, timeout_s=timeout, interval_s=interval, on_update=update)
        except WaitTimeoutError as exc:
            bar.stop()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_WAIT_TIMEOUT) from None


def _finish(job: dict[str, Any], *, as_json: bool) -> None:
    from cyxwiz.jobs.client import SUCCESS_STATUSES

    if as_json:
        _print_json(job)
    else:
        typer.echo(f"{job['job_id']}: {job['status']}")
    if job.get("status") not in SUCCESS_STATUSES:
        raise typer.Exit(EXIT_JOB_UNSUCCESSFUL)


@app.command("submit")
def submit(  # noqa: PLR0917 (typer maps options to parameters)
    file: Annotated[Path, typer.Argument(help="Job spec, YAML (.yaml/.yml) or JSON (.json).")],
    wait: Annotated[
        bool, Opt("--wait", help="Follow the job until it ends; exit 1 if it ends badly.")
    ] = False,
    as_json: AsJson = False,
    timeout: Timeout = None,
    interval: Interval = 1.0,
    wallet: Wallet = None,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
    dataset: Annotated[
        Path | None,
        Opt(
            "--dataset",
            help="A local .npz (x, y) or .csv file: uploaded into your area of the store "
            "(hash- and size-bound), then named by the job.",
        ),
    ] = None,
) -> None:
    """Check a job file locally, sign its escrow lock with your wallet, submit it, print the job id.

    Your wallet key never leaves this machine: only the signed lock travels. The coordinator validates
    the whole spec and the lock, and the control plane sends the lock unchanged.

    A refusal prints its reason on one line (exit 2) and nothing is created.

    Example: [bold]cyxwiz job submit examples/job.yaml --wallet ~/.cyxwiz/wallet.key --wait[/bold]

    Your own data: [bold]cyxwiz job submit examples/wine.yaml --dataset examples/wine.csv --wait[/bold]
    """
    from cyxwiz.jobs.spec import load_job_spec, with_dataset
    from cyxwiz.jobs.wallet import UserWallet

    spec = load_job_spec(file)
    # Without a wallet the spec goes unfunded, and a coordinator with a ledger refuses it (422, F1).
    signer = UserWallet.from_options(path=wallet) if wallet else None
    with _client(url, cert, key, bundle, crl) as client:
        if dataset is not None:
            spec = with_dataset(spec, client.upload_dataset(dataset))
        job = client.submit(spec, wallet=signer)
        if not wait:
            if as_json:
                _print_json(job)
            else:
                typer.echo(
                    f"submitted {job['job_id']} ({job['status']}); follow it: cyxwiz job wait {job['job_id']}"
                )
            return
        if not as_json:
            typer.echo(f"submitted {job['job_id']}")
        final = _follow(client, job["job_id"], timeout=timeout, interval=interval)
    _finish(final, as_json=as_json)


def _steps(progress: dict[str, Any], *, missing: str) -> str:
    """``step/total`` of a job's last progress report, or ``missing`` before the first."""
    return f"{progress['step']}/{progress['total']}" if {"step", "total"} <= set(progress) else missing


@app.command("list")
def list_jobs(  # noqa: PLR0917
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """List your jobs, oldest first.

    Example: [bold]cyxwiz job list --json[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        jobs = client.list_jobs()
    if as_json:
        _print_json(jobs)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job id", "status", "type", "node", "progress", "created")
    for job in jobs:
        spec = job.get("spec") or {}
        table.add_row(
            job["job_id"], job["status"], str(spec.get("job_type", "")), job.get("node_id") or "",
            _steps(job.get("progress") or {}, missing=""),
            str(job.get("created_at", ""))[:19],
        )  # fmt: skip
    Console(width=200).print(table) if jobs else typer.echo("no jobs")


@app.command("get")
def get(  # noqa: PLR0917
    job_id: Annotated[str, typer.Argument(help="The job id printed by submit.")],
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """Show one of your jobs (status, node, progress).

    Example: [bold]cyxwiz job get job-0123abcd --json[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        job = client.get_job(job_id)
    if as_json:
        _print_json(job)
        return
    progress = job.get("progress") or {}
    for label, value in (
        ("job", job["job_id"]),
        ("status", job["status"]),
        ("type", (job.get("spec") or {}).get("job_type")),
        ("node", job.get("node_id") or "-"),
        ("progress", _steps(progress, missing="-")),
        ("metrics", json.dumps(progress.get("metrics") or {}, sort_keys=True)),
        ("proof", "received" if job.get("has_proof") else "-"),
        ("created", job.get("created_at")),
        ("updated", job.get("updated_at")),
    ):
        typer.echo(f"{label:9} {value}")


@app.command("wait")
def wait(  # noqa: PLR0917
    job_id: Annotated[str, typer.Argument(help="The job id printed by submit.")],
    timeout: Timeout = None,
    interval: Interval = 1.0,
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """Follow a job with a progress bar until it ends.

    Terminal states: released, refunded, completed, failed, cancelled, disputed.

    Exit 0 when released/completed, 1 when it ended otherwise, 124 when --timeout ran out first.

    Example: [bold]cyxwiz job wait job-0123abcd --timeout 600[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        final = _follow(client, job_id, timeout=timeout, interval=interval)
    _finish(final, as_json=as_json)


@app.command("dispute")
def dispute(  # noqa: PLR0917
    job_id: Annotated[str, typer.Argument(help="A job of yours whose release is held (status 'held').")],
    segment: Annotated[
        int, Opt("--segment", min=0, help="Start step of a committed segment that does not reproduce.")
    ],
    reason: Annotated[str, Opt("--reason", help="Why, in a sentence (audited).")] = "",
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """Dispute a verified job inside its dispute window: the escrow goes to the arbiter instead of the node.

    The evidence is a committed segment (see the job's commitments) that you claim does not reproduce; the
    arbiter replays it bit for bit. A test set picked after delivery is no evidence: commit a holdout at
    submission (dataset.holdout) instead, and the verifier checks it before any release.

    Example: [bold]cyxwiz job dispute job-0123abcd --segment 40 --reason 'does not reproduce'[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        hold = client.dispute(job_id, kind="segment", segment_start=segment, reason=reason)
    if as_json:
        _print_json(hold)
        return
    typer.echo(f"{hold['job_id']}: {hold['state']} (the window closes {hold['closes_at']})")


@app.command("wallet")
def wallet(  # noqa: PLR0917
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """Show your own wallets, balances and escrows as the coordinator sees them (nobody else's).

    Example: [bold]cyxwiz job wallet[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        view = client.wallet()
    if as_json:
        _print_json(view)
        return
    for name, value in sorted(view.items()):
        if name != "escrows":
            typer.echo(f"{name:18} {value if value is not None else '-'}")
    escrows = view.get("escrows") or []
    typer.echo(f"{'escrows':18} {len(escrows)}")
    for escrow in escrows:
        typer.echo("  " + " ".join(f"{k}={v}" for k, v in sorted(dict(escrow).items())))


@app.command("fund")
def fund(  # noqa: PLR0917
    job_id: Annotated[str, typer.Argument(help="A job of yours that waits for its funding.")],
    wallet: Wallet = None,
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """Sign the escrow lock of a job started without one (from the Prefect UI's job-lifecycle form with
    await_funding_s) with your wallet, here; the waiting run then locks it and goes on.

    Example: [bold]cyxwiz job fund JOB_ID --wallet ~/.cyxwiz/wallet.key[/bold]
    """
    from cyxwiz.jobs.wallet import UserWallet

    signer = UserWallet.from_options(path=wallet)
    with _client(url, cert, key, bundle, crl) as client:
        job = client.fund(job_id, wallet=signer)
    if as_json:
        _print_json(job)
        return
    typer.echo(f"funded {job['job_id']} ({job['status']}); follow it: cyxwiz job wait {job['job_id']}")


@app.command("archive")
def archive(  # noqa: PLR0917
    job_id: Annotated[str | None, typer.Argument(help="A job of yours; none: every job of yours.")] = None,
    name: Annotated[
        str | None, Opt("--get", help="Download this archived object (e.g. outputs/model.safetensors).")
    ] = None,
    output: Annotated[
        Path | None, Opt("--output", "-o", help="Where --get saves it (default: its base name).")
    ] = None,
    as_json: AsJson = False,
    url: Url = None,
    cert: Cert = None,
    key: Key = None,
    bundle: Bundle = None,
    crl: Crl = None,
) -> None:
    """List your jobs' archived artifacts (model, metrics, verification report, settlement), or download
    one, checked against its SHA-256. Nobody else's archive is reachable.

    Example: [bold]cyxwiz job archive JOB_ID --get outputs/model.safetensors[/bold]
    """
    with _client(url, cert, key, bundle, crl) as client:
        if name is not None:
            if job_id is None:
                raise typer.BadParameter("--get needs a JOB_ID")
            dest = output or Path(name.rsplit("/", 1)[-1])
            sha = client.download_archived(job_id, name, dest)
            typer.echo(f"{dest}  sha256 {sha}")
            return
        found = client.archives(job_id)
    archives = [found] if isinstance(found, dict) else found
    if as_json:
        _print_json(found)
        return
    for entry in archives:
        typer.echo(f"{entry['job_id']}  {entry['status']}")
        for obj in entry["objects"]:
            sealed = "  (sealed at rest)" if obj["encrypted"] else ""
            typer.echo(f"  {obj['name']:40} {obj['size']:>12,}  {obj['sha256'][:16]}{sealed}")


@app.command("new-wallet")
def new_wallet(
    path: Annotated[Path, typer.Argument(help="Where to write the sealed key (0600); never overwritten.")],
) -> None:
    """Create your wallet key, sealed with CYXWIZ_WALLET_PASSPHRASE(_FILE), and print its address.

    Fund the address with tokens, then submit with --wallet PATH (or CYXWIZ_WALLET).

    Example: [bold]cyxwiz job new-wallet ~/.cyxwiz/wallet.key[/bold]
    """
    import os

    from cyxwiz.jobs.wallet import UserWallet, passphrase_from

    created = UserWallet.create(path, passphrase=passphrase_from(os.environ))
    typer.echo(created.address)
