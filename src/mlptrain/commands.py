"""The `mlptrain` command (and `python -m mlptrain`): one subcommand per thing the checkout's scripts do, from any
directory, with the configs the package carries (pkg://mlptrain.conf).

    mlptrain train [overrides]           python train.py [overrides], -m sweeps included
    mlptrain compare [overrides]         python scripts/compare.py
    mlptrain predict ckpt_path=... ...   python scripts/predict.py
    mlptrain page ckpt_path=... ...      python scripts/export.py (the page; format=onnx for an ONNX file)
    mlptrain report SWEEP_DIR            python scripts/report.py

The scripts call the same functions: predict, page and report here, and train.py and scripts/compare.py the same
Hydra entry (cli.main) over the same configs (the checkout's conf/ is a link to the package's).
"""

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mlptrain.cli import exit_without_collecting, main
from mlptrain.config import EXPORT_RULES, ExportConfig, parse_arguments
from mlptrain.errors import ConfigError, run_script

CONFIGS = "pkg://mlptrain.conf"


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    return main(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="compare")
def _compare(cfg: DictConfig) -> None:
    from mlptrain.compare import compare  # once the config has passed its checks

    main(cfg, compare)


def predict(arguments: list[str]) -> None:
    """Classify one digit with a checkpoint and print the probability of each digit (scripts/predict.py)."""
    from mlptrain.predict import digit_probabilities, draw_network, draw_nudges, image_pixels, load_trained, test_image

    args = parse_arguments(arguments)
    trained = load_trained(args.ckpt_path)
    data = trained.config.get("data", {})
    if args.image is not None:
        pixels, truth = image_pixels(args.image), None
    else:
        pixels, truth = test_image(args.index, data.get("dir"))
    normalize = data.get("normalize", "standard")
    probs = digit_probabilities(trained, pixels, normalize)
    for digit, p in enumerate(probs):
        print(f"{digit}  {p:6.1%}  {'#' * round(40 * p)}")
    print(f"prediction: {probs.argmax()}" + ("" if truth is None else f" (true label: {truth})"))
    name = f"test image #{args.index}, a {truth}" if args.image is None else str(args.image)
    if args.network is not None:
        draw_network(trained, pixels, normalize, name, Path(args.network))
        print(f"network picture: {args.network}")
    if args.nudges is not None:
        label = truth if truth is not None else args.label
        draw_nudges(trained, pixels, label, normalize, Path(args.nudges))
        print(f"nudges picture: {args.nudges}")


def page(arguments: list[str]) -> None:
    """A checkpoint's page (or ONNX file), served on localhost with serve=true (scripts/export.py)."""
    from mlptrain.page import export, serve

    args = parse_arguments(arguments, ExportConfig, EXPORT_RULES)
    try:
        folder = export(args)
    except OSError as error:  # the checkpoint and the data say so themselves, as MlptrainErrors: this is the output
        what = "ONNX file" if args.format == "onnx" else "page"
        raise ConfigError(
            f"The {what} could not be written: {error.strerror} ({error.filename or args.out}). Nothing else was "
            "changed. Give out= a place you can write to, or leave out= out to write into the checkpoint's run "
            "directory."
        ) from error
    if args.serve and folder is not None:
        serve(folder, args.port)


def report(arguments: list[str]) -> None:
    """A sweep's comparison: sweep_report.md, sweep_jobs.csv and val_acc.png in its folder (scripts/report.py)."""
    from mlptrain.sweep_report import summarize

    if len(arguments) != 1 or not Path(arguments[0]).is_dir():
        raise ConfigError(
            "report takes one argument, a sweep's folder (outputs/multirun/<date>/<time>), not "
            f"{' '.join(arguments)!r}."
        )
    sweep_dir = Path(arguments[0])
    summarize(sweep_dir)
    print((sweep_dir / "sweep_report.md").read_text())


def _hydra(entry: Callable[[], object], job_name: str) -> Callable[[list[str]], None]:
    """A Hydra command's subcommand: its arguments as Hydra's command line, with the job (and its log file) named as
    the checkout's script names it."""

    def run(arguments: list[str]) -> None:
        sys.argv = [f"mlptrain {job_name}", *arguments, f"hydra.job.name={job_name}"]
        entry()

    return run


SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (_hydra(_train, "train"), "train a network: mlptrain train model.activation=tanh loss=mse (-m: a sweep)"),
    "compare": (
        _hydra(_compare, "compare"),
        "train beside hand-written baselines: mlptrain compare experiment=nielsen",
    ),
    "predict": (predict, "classify a digit: mlptrain predict ckpt_path=.../best.ckpt index=8 (or image=my_digit.png)"),
    "page": (page, "draw into the network in a browser: mlptrain page ckpt_path=.../best.ckpt [serve=true]"),
    "report": (report, "compare a sweep's runs: mlptrain report outputs/multirun/<date>/<time>"),
}


def usage() -> str:
    lines = [f"  {name:<8} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "usage: mlptrain COMMAND [ARGUMENTS]\n\n" + "\n".join(lines) + "\n\nmlptrain COMMAND --help says more."


def entry(argv: list[str] | None = None) -> None:
    """The console script `mlptrain` and `python -m mlptrain`."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = arguments[0], arguments[1:]
    if name not in SUBCOMMANDS:
        print(f"error: {name!r} is not an mlptrain command.\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    command = SUBCOMMANDS[name][0]
    exit_without_collecting()
    if name in ("train", "compare"):  # Hydra's command line: --help is Hydra's, listing the config
        command(rest)
    elif rest[:1] in (["-h"], ["--help"]):
        print(f"{SUBCOMMANDS[name][1]}\n\n{command.__doc__}")
    else:
        sys.argv = [f"mlptrain {name}", *rest]
        run_script(command)
