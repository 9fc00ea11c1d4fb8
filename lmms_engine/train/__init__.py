"""Training: the Hydra entry point (`lmms-train`), the loop, schedules and train state."""


def main() -> None:
    """Console script `lmms-train` (imports Hydra lazily so `import lmms_engine.train.loop` stays light)."""
    from lmms_engine.train.app import main as app_main

    app_main()
