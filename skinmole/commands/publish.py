"""Publish a model folder (or the demo Space) to the Hugging Face Hub, in one commit.

    skinmole publish --repo-id ORG/NAME [--model SOURCE] [--revision BRANCH] [--private]
                     [--dry-run] [--output DIR] [--card MODEL_CARD.md]
    skinmole publish --space ORG/NAME --model-repo ORG/NAME [--private] [--dry-run] [--output DIR]

The model repo holds the weights, config.json (labels, input size, preprocessing, threshold,
calibration, sha256, metrics), the history and evaluation plots, and README.md, the model card (YAML
header from config.json; body from this repo's MODEL_CARD.md when publishing the bundled model it
describes, else generated from config.json). The Space folder holds app.py (the demo serving the
model repo), the vendored skinmole package, pinned requirements.txt and README.md with the Space
front matter.

--dry-run assembles the folder (into --output, or a temporary folder removed afterwards) and prints
what would be uploaded, touching no network. Without it: the token (argument, HF_TOKEN or the stored
login) is checked first, the folder is assembled (into --output, kept, or a temporary folder, removed),
the repo created if needed and the folder pushed in one commit. Any failure: one line on stderr,
exit 1, and no partly written folder left behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .. import hub, space
from ..download import looks_like_repo_id
from ..errors import ModelLoadError

# The source checkout, when running from one: its MODEL_CARD.md describes the bundled model. In an
# installed package there is none there, and the card is generated from config.json.
REPO_ROOT = Path(__file__).resolve().parents[2]


def _repo_id(value: str) -> str:
    if not looks_like_repo_id(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Hub repo id (ORG/NAME)")
    return value


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo-id", type=_repo_id, help="the model repo to publish to (ORG/NAME)")
    target.add_argument("--space", type=_repo_id, help="the Space repo to publish the demo to (ORG/NAME)")
    p.add_argument("--model", metavar="SOURCE", default=None,
                   help="model folder, file inside one, or Hub repo id (default: the bundled model)")
    p.add_argument("--model-repo", type=_repo_id, help="with --space: the published model repo it serves")
    p.add_argument("--revision", help="branch to push to (created from main if missing); default main")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--card", type=Path, default=None,
                   help="Markdown body of the model card (default: MODEL_CARD.md for the bundled model, "
                        "else generated from config.json)")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--dry-run", action="store_true", help="assemble and list the folder; no network")
    p.add_argument("--output", type=Path, default=None, help="folder to assemble into (must be new or empty)")
    p.add_argument("--message", default=None, help="commit message")
    return p


def _assemble(args, folder: Path) -> None:
    if args.space:
        space.assemble_space_folder(folder, args.space, args.model_repo)
        return
    card = args.card if args.card is not None else hub.default_card_body(args.model, REPO_ROOT)
    if card is not None and not card.is_file():
        raise hub.PublishError(f"{card}: no such model card file")
    hub.assemble_repo_folder(args.model, folder, args.repo_id, card_body=card, revision=args.revision)


def _listing(folder: Path, args) -> str:
    files = hub.describe_folder(folder)
    total = sum(size for _, size in files)
    kind, repo = ("space", args.space) if args.space else ("model", args.repo_id)
    rev = args.revision or "main"
    lines = [f"{len(files)} files, {total / 1e6:.2f} MB, for {kind} repo {repo} (revision {rev}"
             f"{', private' if args.private else ''}), in one commit:"]
    lines += [f"  {size:>12,d}  {name}" for name, size in files]
    return "\n".join(lines)


def run(args) -> int:
    if args.space and not args.model_repo:
        raise hub.PublishError("--space needs --model-repo ORG/NAME: the published model the Space serves")
    if args.space and (args.model or args.card):
        raise hub.PublishError("--model and --card are for --repo-id; a Space serves --model-repo")
    token = None if args.dry_run else hub.resolve_token(args.token)  # fail before any work
    with tempfile.TemporaryDirectory(prefix="skinmole-publish-") as tmp:
        folder = args.output if args.output is not None else Path(tmp) / "repo"
        _assemble(args, folder)
        if args.dry_run:
            print(f"dry run: assembled {folder}" + ("" if args.output else " (temporary, removed)"))
            print(_listing(folder, args))
            return 0
        print(_listing(folder, args))
        info = hub.upload_folder(
            folder, args.space or args.repo_id, repo_type="space" if args.space else "model",
            revision=args.revision, private=args.private, token=token, commit_message=args.message,
        )
        print(f"published: {getattr(info, 'commit_url', None) or info}")
    return 0


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    try:
        return run(args)
    except (hub.PublishError, ModelLoadError, OSError) as exc:
        message = " ".join(str(exc).split())
        print(f"publish: {message}", file=sys.stderr)
        return 1

