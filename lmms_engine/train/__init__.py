"""Training: the Hydra entry point (`lmms-train`), the loop, schedules and train state."""


def main() -> None:
    """Console script `lmms-train` (imports Hydra lazily so `import lmms_engine.train.loop` stays light)."""
    import sys

    from lmms_engine.overrides import exit_on_unknown_overrides

    exit_on_unknown_overrides(sys.argv[1:])  # before Hydra, whose message for a typo suggests `+key=`
    from lmms_engine.train.app import main as app_main

    app_main()
