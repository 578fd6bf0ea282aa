"""``zoo publish`` and ``zoo card``: Hugging Face Hub repositories and model cards."""

from pathlib import Path

import click

from zoo.cli.app import json_option, main, print_json
from zoo.errors import ZooError


def model_folder(target: str) -> tuple[Path, dict]:
    """(folder, card options) for a registered model NAME or a model folder DIR."""
    from zoo.plugins import get_host

    registry = get_host().registry
    path = Path(target)
    if path.is_dir():
        folder = path.resolve()
        for entry in registry.models.values():  # a registered model's own folder keeps its name and repo
            if entry.bundled is not None and Path(entry.bundled).resolve() == folder:
                return folder, {"name": entry.name, "repo_id": entry.repo_id, "registered": True,
                                "sha256": entry.sha256}
        return folder, {"name": folder.name, "repo_id": None, "registered": False, "sha256": None}
    entry = registry.model(target)
    if entry.bundled is None or not Path(entry.bundled).is_dir():
        raise ZooError(f"{target!r} has no local folder in this installation (it is fetched from "
                       f"hf://{entry.repo_id}); pass a model folder instead")
    return Path(entry.bundled), {"name": entry.name, "repo_id": entry.repo_id, "registered": True,
                                 "sha256": entry.sha256}


@main.command("publish")
@click.argument("target", metavar="NAME|DIR")
@click.option("--repo-id", required=True, metavar="ORG/NAME", help="The Hub repository to create or update.")
@click.option("--revision", default=None, metavar="BRANCH", help="Branch to commit to (created from main if new).")
@click.option("--private", is_flag=True, help="Create the repository as private (applies when it is created).")
@click.option("--token", default=None, envvar="HF_TOKEN", show_envvar=True,
              help="Hub token with write access [default: HF_TOKEN or the `hf auth login` token].")
@click.option("--message", "-m", default=None, help="Commit message.")
@json_option
def publish_command(target, repo_id, revision, private, token, message, as_json):
    """Upload a model to the Hugging Face Hub in one commit.

    NAME is a pretrained model, DIR a folder with model.safetensors, config.json
    and a README.md card (write one with `zoo card DIR`). eval.json, recipe.json
    and the images the card embeds are uploaded too; pickle files are refused.
    HF_ENDPOINT selects another Hub server.
    """
    from zoo.hub import publish
    from zoo.plugins import get_host

    folder, options = model_folder(target)
    result = publish(folder, repo_id, revision=revision, private=private, token=token or None, message=message,
                     architectures=get_host().registry.architectures, expected_sha256=options["sha256"])
    if as_json:
        print_json(vars(result))
        return
    click.echo(f"published {folder} to {result.repo_url}" + (" (private)" if result.private else ""))
    if private and not result.private:
        click.echo("note: the repository already existed and is public; --private applies only when it is "
                   "created (change the visibility in the repository settings on the Hub)", err=True)
    if not result.changed:
        click.echo("no changes: the branch already held these files, so no new commit was made")
    click.echo(f"files:    {', '.join(result.files)}")
    click.echo(f"branch:   {result.revision}")
    click.echo(f"revision: {result.commit_oid}")
    click.echo(f"commit:   {result.commit_url}")
    click.echo(f"load it:  zoo.load(\"hf://{result.repo_id}@{result.commit_oid}\")")


@main.command("card")
@click.argument("target", metavar="NAME|DIR")
@click.option("--repo-id", default=None, metavar="ORG/NAME", help="Repository the usage snippets name "
              "[default: the model's registered repo, else ORG/<folder name>].")
@click.option("--eval", "eval_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Take the results from this `zoo eval --out` file (copied to the folder's eval.json).")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the card instead of writing README.md.")
def card_command(target, repo_id, eval_file, to_stdout):
    """(Re-)render the README.md model card of NAME or DIR from its latest eval.json and recipe.json."""
    import shutil

    from zoo.cards import EVAL_NAME, render_card, write_card

    folder, options = model_folder(target)
    if eval_file is not None and eval_file.resolve() != (folder / EVAL_NAME).resolve():
        shutil.copyfile(eval_file, folder / EVAL_NAME)
    card_options = {"name": options["name"], "repo_id": repo_id or options["repo_id"],
                    "registered": options["registered"]}
    if to_stdout:
        click.echo(render_card(folder, **card_options), nl=False)
        return
    path = write_card(folder, **card_options)
    click.echo(f"wrote {path}")
