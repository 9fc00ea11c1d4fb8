"""Training: the Hydra entry point (`lmms-train`), the loop, schedules and train state."""


def main() -> None:
    """Console script `lmms-train` (imports Hydra lazily so `import lmms_engine.train.loop` stays light)."""
    import sys

    from lmms_engine.train.preflight import prepared_argv_or_exit

    sys.argv[1:] = prepared_argv_or_exit(sys.argv[1:])  # before Hydra composes (and before torch is imported)
    from lmms_engine.train.app import main as app_main

    app_main()
