"""``vfmtok-pipeline`` (or ``python -m pipeline``): run one stage's Prefect flow, and the tools
around the pipeline.

``vfmtok-pipeline STAGE`` runs a stage exactly as ``dvc.yaml``'s ``python -m pipeline.stage STAGE``
does (``pipeline/stage.py``). A user
error (bad params, source, token file, missing model) prints one ``error:`` line and exits with 2;
``--debug`` (or ``VFMTOK_DEBUG=1``) shows the traceback instead. ``check`` builds the params'
models on torch's meta device (``pipeline/commands/check.py``; ``--no-build``: no torch); ``profile``,
``deps`` and ``summary`` import no torch and no Prefect; ``generate`` and ``reconstruct`` use the trained
model folders (``pipeline/commands/``); ``reproduce`` and ``serve`` are the Prefect orchestration
(``pipeline/orchestration/``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from pipeline import errors, stage
from pipeline.orchestration import prefect_env


def _use_profile(name: str, root: str) -> None:
    from pipeline.params import load_params, profile_path

    src = profile_path(name, root)
    if not src.is_file():
        known = sorted(p.stem for p in src.parent.glob("*.yaml"))
        raise errors.UserError(f"{src}: no such profile (known: {', '.join(known)})")
    load_params(src)  # refuse to activate a profile that does not validate here
    shutil.copyfile(src, Path(root) / "params.yaml")
    print(f"params.yaml is now the {name!r} profile ({src})")


def _stale(root: str, targets: list[str]) -> list[str] | None:
    """DVC's status, in-process: the stale stages (None when the check fails: e.g. an unknown
    target, which the flow then reports properly)."""
    from pipeline.orchestration.dag import stale_stages

    try:
        return stale_stages(root, targets or None)
    except Exception:  # noqa: BLE001
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfmtok-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".", help="project root (default: .)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in stage.STAGES:
        sub.add_parser(name, help=f"run the {name} stage").add_argument("--params", default="params.yaml")
    sub.add_parser("profile", help="activate params/NAME.yaml").add_argument("name")
    chk = sub.add_parser("check", help="validate a params file and build its models on the meta device "
                         "(for a torchrun launch of N processes: WORLD_SIZE=N vfmtok-pipeline check)")
    chk.add_argument("file", nargs="?", default="params.yaml")
    chk.add_argument("--no-paths", action="store_true",
                     help="skip what this machine must have (input files and folders, CUDA): a profile "
                          "written for another machine")
    chk.add_argument("--no-build", action="store_true",
                     help="the params rules only: build no model, import no torch (milliseconds)")
    deps = sub.add_parser("deps", help="each stage's project modules; --check: against dvc.yaml")
    deps.add_argument("--check", action="store_true")
    deps.add_argument("--write", action="store_true", help="rewrite the module deps in dvc.yaml")
    cmp = sub.add_parser("compare", help="Markdown table of two revisions' params and metrics")
    cmp.add_argument("rev_a", help="a commit, branch or DVC experiment name")
    cmp.add_argument("rev_b")
    clm = sub.add_parser("claims", help="VFMTok vs VQGAN vs a random-init backbone -> reports/claims.md")
    clm.add_argument("--run", action="store_true",
                     help="run the DVC experiments first (three in temp dirs; the CFG sweep in the "
                          "workspace, which must be clean); otherwise read existing ones")
    clm.add_argument("--profile", default="claims",
                     help="params/NAME.yaml for the runs (default: claims; active: params.yaml)")
    rvr = sub.add_parser("rar-vs-raster", help="RAR vs the raster GPT, equal size and steps -> "
                                                "reports/rar_vs_raster.md")
    rvr.add_argument("--run", action="store_true",
                     help="run the two DVC experiments first (otherwise read existing ones)")
    rvr.add_argument("--gpt", default="GPT-Tiny", help="the raster GPT (default: GPT-Tiny)")
    rvr.add_argument("--rar", default="RAR-Tiny", help="the RAR of the same size (default: RAR-Tiny)")
    imp = sub.add_parser("import-weights", help="released VFMTok / LlamaGen checkpoints -> data/tokenizer, "
                         "data/generator (see README: Importing released weights)")
    imp.add_argument("--tokenizer", metavar="FILE", help="VFMTok's vfmtok-tokenizer.pt")
    imp.add_argument("--gpt", metavar="FILE", help="VFMTok's GPT-*-*e.pt or LlamaGen's c2i_*_*.pt")
    imp.add_argument("--n-tokens", type=int, default=256, help="the GPT's tokens per image: 256, or 576 for "
                     "LlamaGen's c2i_*_384.pt (default 256)")
    imp.add_argument("--backbone-weights", metavar="FILE", help="DINOv2 ViT-L/14-reg4 weights for the "
                     "tokenizer (default: backbone.weights of the params file)")
    imp.add_argument("--weights", choices=["ema", "model"], default="ema",
                     help="which weights of a training checkpoint (default: ema when present)")
    imp.add_argument("--params", default="params.yaml")
    rep = sub.add_parser("reproduce", help="dvc repro as one Prefect flow, a task per stage")
    rep.add_argument("targets", nargs="*", help="stages to update, with their upstream (default: all)")
    rep.add_argument("--record", action="store_true",
                     help="run (and record) the Prefect flow even when DVC says every stage is current")
    gen = sub.add_parser("generate", help="a PNG grid of new images of one class "
                         "(data/generator, data/tokenizer)")
    gen.add_argument("--class", dest="class_spec", required=True, metavar="NAME_OR_ID",
                     help="class name (data/prepared/classes.json) or number")
    gen.add_argument("-n", type=int, default=16, help="how many images (default 16, 8 a row)")
    gen.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
    gen.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1.0 = off)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    gen.add_argument("--seed", type=int, default=0)
    rec = sub.add_parser("reconstruct", help="tokenize your own images and write their reconstructions")
    rec.add_argument("images", nargs="+", type=Path, help="image files, any size and mode")
    rec.add_argument("--out", type=Path, required=True, help="folder for <name>.png and tokens.json")
    for s in (gen, rec):
        s.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: data/tokenizer)")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda")
    gen.add_argument("--gpt", type=Path, help="GPT folder (default: data/generator)")
    sub.add_parser("summary", help="the headline results, where the pictures are, what to run next")
    srv = sub.add_parser("serve", help="serve the scheduled retrain (a named `dvc exp run` per run)")
    srv.add_argument("--cron", default="0 3 * * 0", help='schedule (default: "0 3 * * 0", Sundays 03:00)')
    srv.add_argument("--name", default="vfmtok-retrain", help="deployment name")
    srv.add_argument("--set", dest="set_params", action="append", default=[], metavar="KEY=VALUE",
                     help="params override for every scheduled run, as `dvc exp run -S` (repeatable)")
    srv.add_argument("--start-server", action="store_true", help="also run `prefect server` on 127.0.0.1")
    srv.add_argument("--port", type=int, default=4200, help="Prefect server port on 127.0.0.1")
    for s in (rep, srv):
        s.add_argument("--retries", type=int, default=2, help="retries of a failing stage")
        s.add_argument("--retry-delay", type=float, default=10.0, help="first retry delay, doubling after")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "profile":
        _use_profile(args.name, args.root)
    elif args.command == "check":
        from pipeline.params import launch_world_size, load_params

        params = load_params(args.file, check_paths=not args.no_paths)
        params.check_launch(launch_world_size())  # both training stages, for this launch's processes
        if not args.no_build:  # the rules only a built model knows (pipeline/commands/check.py)
            from pipeline.commands.check import check_models

            check_models(params, machine=not args.no_paths)
        print(f"{args.file}: ok")
    elif args.command == "deps":
        from pipeline.commands import deps

        return deps.cli(Path(args.root), check=args.check, rewrite=args.write)
    elif args.command == "compare":
        from pipeline.experiments.compare import compare

        print(f"wrote {compare(args.rev_a, args.rev_b, args.root)}")
    elif args.command == "claims":
        from pipeline.experiments.claims import claims

        print(f"wrote {claims(args.root, run=args.run, profile=args.profile)}")
    elif args.command == "rar-vs-raster":
        from pipeline.experiments.rar_vs_raster import rar_vs_raster

        print(f"wrote {rar_vs_raster(args.root, args.gpt, args.rar, run_first=args.run)}")
    elif args.command == "import-weights":
        from pipeline.commands.import_weights import run

        for line in run(args.root, args.params, args.tokenizer, args.gpt, args.n_tokens,
                        args.backbone_weights, args.weights):
            print(line)
    elif args.command == "reproduce":
        from pipeline.orchestration.run_api import start_run_api

        api = start_run_api()  # comes up while DVC's status, Prefect and the flows load
        stale = _stale(args.root, args.targets)
        if not args.record and stale == []:
            if api:
                api.stop()
            print("Data and pipelines are up to date (dvc status): no stage to run, no Prefect run "
                  "started (--record starts one anyway).")
            return 0
        from pipeline.orchestration.flows import reproduce_flow

        if api:
            api.wait_until_healthy()
        state = reproduce_flow(root=args.root, targets=args.targets or None, retries=args.retries,
                               retry_delay_s=args.retry_delay, stale=stale, return_state=True)
        if state.is_completed():
            return 0
        if errors.is_user_error(failed := state.result(raise_on_failure=False)):
            raise failed  # a stage's bad input: its one error: line, exit 2 (stage.guarded)
        return 1
    elif args.command == "generate":
        from pipeline.commands.generate import Sampling, generate_grid

        sampling = Sampling(n=args.n, cfg_scale=args.cfg, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
        print(generate_grid(Path(args.root), args.class_spec, args.out, sampling, args.device, args.tokenizer,
                            args.gpt))
    elif args.command == "reconstruct":
        from pipeline.commands.reconstruct import describe, reconstruct_images

        results = reconstruct_images(Path(args.root), args.images, args.out, args.device, args.tokenizer)
        for r in results:
            print(describe(r))
        print(f"token ids: {args.out / 'tokens.json'}")
    elif args.command == "summary":
        from pipeline.commands.summary import summary

        print(summary(Path(args.root)))
    elif args.command == "serve":
        from pipeline.orchestration.server import serve

        serve(args.root, args.cron, args.name, args.set_params, args.start_server, args.port,
              args.retries, args.retry_delay)
    else:
        stage.run(args.command, args.params, args.root)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.debug:
        os.environ[errors.DEBUG_ENV] = "1"
    prefect_env.configure(args.root)
    return stage.guarded(lambda: _dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
