"""What an operator deploys and what starts infrastructure: production service entry points
(:mod:`infra.serve`), systemd units and documented settings (``infra/systemd``, ``infra/config``), and the
network-namespace multi-host harness (:mod:`infra.netns`, ``python -m infra.cluster``)."""
