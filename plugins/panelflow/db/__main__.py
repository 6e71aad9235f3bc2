import argparse

from panelflow.db import downgrade, upgrade, url_from_connection


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m panelflow.db", description="Migrate the panel database.")
    p.add_argument("action", choices=["upgrade", "downgrade"])
    p.add_argument("url", nargs="?", help="database URL (default: the Airflow connection panel_db)")
    p.add_argument("--revision", default=None)
    a = p.parse_args()
    url = a.url or url_from_connection()
    if a.action == "upgrade":
        upgrade(url, a.revision or "head")
    else:
        downgrade(url, a.revision or "-1")


if __name__ == "__main__":
    main()
