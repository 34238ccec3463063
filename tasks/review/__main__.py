"""``python -m tasks.review``: the review stage's command (dvc.yaml)."""

from tasks.stage import cli_main

if __name__ == "__main__":
    cli_main("review")
