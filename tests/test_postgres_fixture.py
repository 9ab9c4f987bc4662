import sqlalchemy as sa


def test_postgres_fixture_is_a_real_server(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("select version()")).scalar_one()
    assert "PostgreSQL" in version
