"""The command line: ``python -m wasap.run``.

With no arguments it trains the paper's Madelon network (500-400-100-400-2,
All-ReLU alpha 0.5, epsilon 10, batch 32) on the copy of Madelon shipped with
wasap and prints its test accuracy. ``python -m wasap.run --help`` lists every
flag. The flags of the hyperparameters are made from their declarations in
:mod:`wasap.config` (:func:`add_config_arguments`); the others, which say what
to train on and where to write, are written out in :func:`build_parser`.
"""

import argparse
import json
import os
import sys
import time
import warnings
from typing import Callable, Iterable, Mapping, Sequence

from . import __version__
from .augment import resolve_augment
from .checkpoint import CHECKPOINT_FILE, DEFAULT_EVERY, CheckpointError, load_checkpoint, peek_checkpoint_config
from .config import HYPERPARAMETERS, WIDTH_AWARE_KEYS, ConfigError, Hyperparameter, TrainConfig
from .data import DataError, load_dataset
from .memory import DEFAULT_BUDGET, parse_budget, plan_run
from .model import SparseMLP
from .parallel import WorkerFailed, fit_parallel, resolve_workers
from .parallel.shm import SharedMemoryFull
from .records import OutputDirError, OutputWriteError
from .signals import EXIT_STATUS
from .threads import available_cores, capped_threads, default_threads, max_threads, set_threads
from .train import fit

#: The paper's settings per data set (Table 2 and the authors' code); explicit
#: flags win over them, and TrainConfig's defaults fill the rest (all of it for
#: data without a preset, such as a user's file). Madelon, the data set most
#: prone to overfit, takes a stronger weight decay, and Fashion-MNIST, slow to
#: learn at the paper's rate, a doubled learning rate: both chosen on tuning
#: seeds, not on the seeds reported. CIFAR-10's training images are augmented
#: as the authors' code does (``--augment none`` turns it off).
PRESETS = {
    "madelon": dict(hidden=(400, 100, 400), alpha=0.5, epsilon=10.0, batch_size=32, epochs=500,
                    weight_decay=6e-3),
    "fashion-mnist": dict(hidden=(1000, 1000, 1000), alpha=0.6, epsilon=20.0, batch_size=128, epochs=100,
                          lr=0.02),
    "higgs": dict(hidden=(1000, 1000, 1000), alpha=0.05, epsilon=10.0, batch_size=128, epochs=100),
    "cifar10": dict(hidden=(4000, 1000, 4000), alpha=0.75, epsilon=20.0, batch_size=128, epochs=100,
                    augment="3x32x32"),
    "synthetic": dict(hidden=(1000, 1000, 1000), alpha=0.5, epsilon=20.0, batch_size=128, epochs=20),
}
#: The hyperparameters some preset sets: their flags default to None, which means "the preset's, else
#: TrainConfig's".
PRESET_KEYS = tuple(dict.fromkeys(name for preset in PRESETS.values() for name in preset))

#: Where each section of hyperparameters (:data:`wasap.config.SECTIONS`) is listed in ``--help``.
SECTION_TITLES = {"network": "network", "training": "training", "parallel": "parallelism"}


def _sizes(flag):
    """The argparse type of ``flag``, which takes layer sizes separated by commas."""
    def parse(text):
        try:
            sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part != "")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes sizes separated by commas, like 400,100,400; got {text!r}") from None
        if not sizes:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one layer size, like 400,100,400")
        return sizes
    return parse


def _count(flag, text, takes="a whole number"):
    """``text`` as an int >= 1, or the argparse error naming ``flag``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes {takes}, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
    return value


def _counts(flag):
    """The argparse type of ``flag``, which takes a whole number >= 1."""
    return lambda text: _count(flag, text)


def _memory_budget(text):
    try:
        return parse_budget(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _workers(text):
    return "auto" if text == "auto" else _count("--workers", text, "a number or 'auto'")


def _seconds(text):
    """``text`` as a number of seconds >= 0, or the argparse error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of seconds, got {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"takes a number of seconds >= 0, got {text!r}")
    return value


#: What the command line takes for some hyperparameters beyond their declaration: a stricter or wider
#: parser (a run of 0 epochs writes nothing; ``--workers auto``), or what leaving the flag out means.
FLAG_FORMS = {
    "epochs": dict(type=_counts("--epochs")),
    "threads": dict(type=_counts("--threads")),
    "workers": dict(type=_workers, metavar="K", help_suffix="; 'auto': one per core"),
    "micro_batch": dict(unset="the largest that fits --memory-budget"),
    "augment": dict(metavar="CxHxW|auto|none"),
}


def _flag_value(value):
    """A value as it is typed on the command line: ``400,100,400``, ``0.01``."""
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_help(spec, form, from_preset):
    """``--help``'s line for the flag of ``spec``, its default included."""
    text = spec.help + form.get("help_suffix", "")
    if from_preset:
        default = f"the data set's preset, else {_flag_value(spec.default)}"
    elif spec.default is None:
        default = form.get("unset", spec.unset)
    elif spec.type is bool:
        default = None  # a switch, off unless given
    else:
        default = _flag_value(spec.default)
    text = text if default is None else f"{text} (default: {default})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_config_arguments(groups: Mapping[str, argparse._ArgumentGroup], *,
                         preset_keys: Iterable[str] = PRESET_KEYS,
                         forms: Mapping[str, dict] = FLAG_FORMS) -> None:
    """Add the flag ``--field-name`` of each hyperparameter with a command-line face.

    Parameters
    ----------
    groups : mapping of str to argparse argument group
        Where to add the flags of each section of :data:`wasap.config.SECTIONS`.
    preset_keys : iterable of str
        Hyperparameters whose flags default to None (a data set's preset, else TrainConfig's default).
    forms : mapping of str to dict
        Per hyperparameter: ``type`` (an argparse type instead of the declared one), ``metavar``,
        ``help_suffix`` and ``unset`` (what leaving the flag out means, when its default is None).
    """
    preset_keys = set(preset_keys)
    for spec in HYPERPARAMETERS.values():
        if not spec.cli:
            continue
        form = forms.get(spec.name, {})
        from_preset = spec.name in preset_keys
        group = groups[spec.section]
        help_text = _flag_help(spec, form, from_preset)
        if spec.type is bool:
            action = argparse.BooleanOptionalAction if spec.default else "store_true"
            group.add_argument(spec.flag, action=action, default=spec.default, help=help_text)
            continue
        group.add_argument(spec.flag, type=form.get("type", _flag_type(spec)), choices=spec.choices,
                           default=None if from_preset else spec.default, metavar=form.get("metavar"),
                           help=help_text)


def _flag_type(spec: Hyperparameter) -> Callable[[str], object]:
    """The argparse type of a declared type; TrainConfig checks the value once parsed."""
    return _sizes(spec.flag) if spec.type is tuple else spec.type


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default only when it has a real one (not None or False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(prog: str = "python -m wasap.run") -> argparse.ArgumentParser:
    """The argument parser of ``python -m wasap.run`` (or of ``wasap train``: ``prog``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a truly sparse MLP (SET, All-ReLU, Importance Pruning) and write metrics.jsonl, "
                    "summary.json and model.npz to an output folder. A flag whose default is \"the data set's "
                    "preset\" takes the paper's setting for the named data set; for data without a preset (a "
                    "PATH) it takes TrainConfig's default, as the Python API does.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="madelon",
                      help="madelon (shipped), fashion-mnist, higgs, cifar10, synthetic, or a PATH "
                           "(.npz with X_train/y_train/X_test/y_test, .csv, svmlight, or a folder of IDX files)")
    data.add_argument("--data-dir", help="folder holding the files of fashion-mnist, higgs or cifar10")
    data.add_argument("--n-samples", type=int, default=10000, help="synthetic: samples (70/30 train/test)")
    data.add_argument("--n-features", type=int, default=100, help="synthetic: features")
    data.add_argument("--n-classes", type=int, default=2, help="synthetic: classes")
    scaling = data.add_mutually_exclusive_group()
    scaling.add_argument("--standardize", dest="standardize", action="store_true", default=None,
                         help="standardise the features with the train split's statistics (the default for dense "
                              "data; sparse data are then scaled without centering)")
    scaling.add_argument("--no-standardize", dest="standardize", action="store_false",
                         help="keep the raw feature values (the default for sparse data)")

    groups = {section: parser.add_argument_group(title) for section, title in SECTION_TITLES.items()}
    add_config_arguments(groups)
    train = groups["training"]
    train.add_argument("--recipe", choices=("paper", "width-aware"), default="paper",
                       help="width-aware: tanh, he-uniform-sparse, a zeroed output layer, lr 6e-5*n and output lr "
                            "50/n for n inputs an output neuron, no dropout, for networks hundreds of thousands "
                            "of neurons wide (TrainConfig.width_aware; flags given explicitly still win) "
                            "[%(default)s]")
    train.add_argument("--memory-budget", type=_memory_budget, default=DEFAULT_BUDGET, metavar="AMOUNT",
                       help="memory the run may plan to use: an amount (8G, 500M) or a fraction of the memory "
                            "available (0.5, 50%%); without --micro-batch the largest micro-batch that fits is "
                            "chosen, and a run that fits in none is refused before it allocates [%(default)s]")

    output = parser.add_argument_group("output")
    output.add_argument("--out", help="output folder (default: runs/<dataset>-<date>-<time>)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace the run in a non-empty --out folder (other files in it are kept)")
    output.add_argument("--resume", metavar="DIR",
                        help="continue the stopped run in DIR from its checkpoint, with the run's own flags "
                             "(only --quiet may be added)")
    output.add_argument("--checkpoint-every", type=_seconds, default=DEFAULT_EVERY, metavar="SECONDS",
                        help="seconds between checkpoints inside an epoch (one is written after each epoch "
                             "unless that would cost over 5%% of the time; 0: after every batch)")
    output.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the flags describe (preset of the data set, then explicit flags)."""
    preset = PRESETS.get(args.dataset.strip().lower(), {})
    values = {name: getattr(args, name) for name, spec in HYPERPARAMETERS.items() if spec.cli}
    for name in PRESET_KEYS:
        if values[name] is None:
            values[name] = preset.get(name, HYPERPARAMETERS[name].default)
    if args.activation != "all-relu" and args.alpha is None:
        values["alpha"] = None
    try:
        values["augment"] = resolve_augment(values["augment"], args.dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    threads = values["threads"]
    # Left out, the count adapts to the machine while the run goes on (wasap.threads.ThreadGovernor).
    values["threads"] = None if threads is None else capped_threads(threads, name="--threads")
    values["workers"] = resolve_workers(values["workers"])
    return TrainConfig(**values)


def explicit_flags(argv: Sequence[str]) -> set:
    """Names (``args`` attributes) of the options given on the command line, defaults left out."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def apply_recipe(config: TrainConfig, n_outputs: int, explicit: Iterable[str]) -> TrainConfig:
    """``config`` under :meth:`TrainConfig.width_aware` for ``n_outputs`` outputs; ``explicit`` flags win."""
    kept = {name: value for name, value in config.to_dict().items()
            if name not in WIDTH_AWARE_KEYS or name in explicit}
    hidden, epsilon = tuple(kept.pop("hidden")), kept.pop("epsilon")
    return TrainConfig.width_aware(hidden, n_outputs, epsilon=epsilon, **kept)


#: Fewest batches a worker's share of an epoch should hold for WASAP-SGD to be worth its processes.
#: Every epoch ends with the server holding all the layers' locks for its snapshot and SET, and a
#: worker reports its steps to the server at least every 1/16 of its share (wasap/parallel/worker.py):
#: on shorter shares those waits and wake-ups cost more than the workers gain by sharing the batches.
MIN_BATCHES_PER_WORKER = 128


class RunWarning(UserWarning):
    """The flags ask for something the run will not do, or will do slowly; the message says what to change."""


def pruning_epochs(config: TrainConfig) -> range:
    """The epochs (1-based) after which Importance Pruning runs, as the trainers schedule it.

    Parameters
    ----------
    config : TrainConfig
        With ``workers`` an int.

    Returns
    -------
    range
        Empty when ``importance_pruning`` is off or no epoch qualifies.
    """
    if not config.importance_pruning:
        return range(0)
    last = config.epochs - 1  # the topology does not change after the last epoch
    if _has_phase_two(config):
        last = min(last, config.phase2_start - 1)  # phase two's replicas evolve but are not pruned
    first = max(1, config.ip_start)
    return range(first + (-first) % config.ip_every, last + 1, config.ip_every)


def _has_phase_two(config):
    """Whether a WASAP-SGD run reaches phase two (local replicas)."""
    parallel = config.workers > 1 or config.transport == "mpi"
    return parallel and config.phase2_start is not None and config.phase2_start <= config.epochs


def plan_problems(config: TrainConfig, n_train: int) -> list:
    """Messages about flags that will not do what they suggest, each saying what to change.

    Parameters
    ----------
    config : TrainConfig
        With ``workers`` an int.
    n_train : int
        Training samples.

    Returns
    -------
    list of str

    Raises
    ------
    ConfigError
        When the run cannot start: more workers than training samples.
    """
    problems = []
    if config.importance_pruning and not pruning_epochs(config):
        phase_two = f" nor in phase two (from epoch {config.phase2_start})" if _has_phase_two(config) else ""
        problems.append(
            f"--importance-pruning prunes nothing in this run: it runs after each epoch from --ip-start "
            f"{config.ip_start} on that is a multiple of --ip-every {config.ip_every}, but not after the last "
            f"epoch ({config.epochs}){phase_two}. Lower --ip-start (and --ip-every) or raise --epochs.")
    one_process = config.workers == 1 and config.transport == "shm"
    problems.extend(_sequential_problems(config) if one_process else _parallel_problems(config, n_train))
    return problems


def _sequential_problems(config):
    """:func:`plan_problems` for WASAP-SGD's flags given to a run in one process."""
    given = {"--sync": config.sync, "--phase2-start": config.phase2_start is not None}
    ignored = [flag for flag, is_given in given.items() if is_given]
    if not ignored:
        return []
    verb, pronoun = ("change", "them") if len(ignored) > 1 else ("changes", "it")
    return [f"{' and '.join(ignored)} only {verb} WASAP-SGD (--workers K > 1); this run trains in one process "
            f"and ignores {pronoun}."]


def _parallel_problems(config, n_train):
    """:func:`plan_problems` for a WASAP-SGD run of ``config.workers`` workers."""
    workers = config.workers
    if workers > n_train:
        raise ConfigError(f"--workers {workers} needs at least {workers} training samples (one partition each), "
                          f"but the data has {n_train}; use fewer workers (--workers 1 trains in one process).")
    problems = []
    cores = available_cores()
    if workers > cores and config.transport == "shm":
        problems.append(f"--workers {workers} on {cores} core(s): workers beyond the cores take turns on them, "
                        f"which slows each many times; use --workers {cores} or fewer (--workers auto).")
    share = -(-n_train // workers)
    batches = -(-share // config.batch_size)
    if batches < MIN_BATCHES_PER_WORKER:
        problems.append(
            f"--workers {workers}: each worker's share of an epoch is {batches} batch{'es' if batches > 1 else ''} "
            f"of {config.batch_size} ({share} of the {n_train} training samples), fewer than the "
            f"{MIN_BATCHES_PER_WORKER} or so WASAP-SGD needs to pay off: every epoch's end stops all the workers, "
            "and on short shares that costs more than sharing the batches gains, so this run is likely slower "
            "than one process. Use --workers 1 (one process; --threads sets its kernel threads).")
    if config.phase2_start is not None and config.phase2_start > config.epochs:
        problems.append(f"--phase2-start {config.phase2_start} is after the last epoch ({config.epochs}): phase two "
                        "never starts. Lower it, or leave it out.")
    return problems


def warn_about_plan(config: TrainConfig, n_train: int) -> None:
    """Warn (:class:`RunWarning`) once per message of :func:`plan_problems`."""
    for message in plan_problems(config, n_train):
        warnings.warn(message, RunWarning, stacklevel=2)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings on the command line: one ``warning: ...`` line on stderr, without the source line."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


#: Flags that may be given with --resume: they change what is shown, not what is computed.
RESUME_FLAGS = ("resume", "quiet")


def resume_point(out_dir: str, argv: Sequence[str]) -> tuple:
    """The checkpoint of the run in ``out_dir`` and the flags it was started with.

    Returns
    -------
    args : argparse.Namespace
        The run's own flags, with ``out`` set to ``out_dir`` and ``--quiet`` as given now.
    model : SparseMLP
        The checkpoint's model, momentum included.
    state : dict
        The checkpoint's state (:func:`wasap.checkpoint.load_checkpoint`).
    """
    extra = sorted(explicit_flags(argv) - set(RESUME_FLAGS))
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise CheckpointError(f"--resume continues a run with its own flags; remove {flags} (only --quiet may "
                              "be added), or start a new run in a new folder.")
    summary_path = os.path.join(out_dir, "summary.json")
    summary = {}
    if os.path.exists(summary_path):
        try:
            with open(summary_path) as stream:
                summary = json.load(stream)
            stopped = summary.get("stopped")
        except (OSError, ValueError, AttributeError):
            summary, stopped = {}, None
        if stopped == "completed":
            raise CheckpointError(f"the run in {out_dir!r} completed all its epochs (summary.json); there is "
                                  "nothing to continue. Start a new run with more --epochs in a new folder.")
    model, state = load_checkpoint(os.path.join(out_dir, CHECKPOINT_FILE))
    command_line = (state.get("run") or {}).get("command_line")
    if command_line is None:
        raise CheckpointError(f"the checkpoint in {out_dir!r} was written by wasap.train.fit, not by the command "
                              "line, so it does not say which data to load; continue it from Python with "
                              "wasap.train.fit(..., resume=state).")
    args = build_parser().parse_args(command_line)
    args.out, args.resume, args.quiet = out_dir, out_dir, args.quiet or "quiet" in explicit_flags(argv)
    if args.standardize is None:
        # The data are loaded as the run loaded them, whatever the default for their kind is now. Checkpoints
        # that do not record it come from versions that standardised sparse data too, and said so in the
        # data set's description in summary.json.
        recorded = (state.get("run") or {}).get("standardized")
        if recorded is None and "scaled without centering" in str(summary.get("dataset") or ""):
            recorded = True
        args.standardize = recorded
    return args, model, state


def main(argv: Sequence[str] = None, prog: str = "python -m wasap.run") -> int:
    """Run the command line; returns the exit status.

    Under an MPI launcher with ``--transport mpi`` every rank runs this: rank 0 trains as the parameter
    server, the others serve as its workers (:func:`wasap.parallel.run_mpi_worker`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    if _transport_of(args) != "mpi":
        return _train(args, argv)
    from .parallel import mpi_transport

    try:
        comm = mpi_transport.world()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if comm.Get_rank() > 0:
        return mpi_transport.end_of_job(mpi_transport.run_mpi_worker(comm))
    status = 1
    try:
        status = _train(args, argv, comm=comm)
    finally:
        mpi_transport.release_waiting_workers(comm, status)
    return mpi_transport.end_of_job(status)


def _transport_of(args):
    """The run's transport: its flag, or for ``--resume`` the one the stopped run used."""
    if not args.resume:
        return args.transport
    config = peek_checkpoint_config(os.path.join(args.resume, CHECKPOINT_FILE))
    # Without a readable config the resume runs on one process, which reports what is wrong.
    return (config or {}).get("transport", "shm")


def _train(args, argv, comm=None):
    """The run of ``main`` on the one process that trains (rank 0 of an MPI job: ``comm``)."""
    out_dir = args.out
    try:
        model = state = None
        command_line = argv
        if args.resume:
            args, model, state = resume_point(args.resume, argv)
            command_line = state["run"]["command_line"]
        say = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
        config = config_from_args(args) if state is None else TrainConfig.from_dict(state["config"])
        set_threads(config.threads)
        out_dir = args.out or os.path.join(
            "runs", f"{os.path.basename(args.dataset.rstrip('/')) or 'data'}-{time.strftime('%Y%m%d-%H%M%S')}")
        data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed,
                            standardize=args.standardize, n_samples=args.n_samples,
                            n_features=args.n_features, n_classes=args.n_classes)
        say(f"data: {data.description or data.name}")
        explicit = explicit_flags(command_line)
        if data.is_sparse and state is None:
            sparse_config = config.for_sparse_input(data.n_train, keep=explicit)
            if sparse_config != config:
                config = sparse_config
                say(f"sparse input: batch size {config.batch_size}, activation {config.activation} "
                    "(the defaults for sparse data; --batch-size and --activation set them)")
        if args.recipe == "width-aware" and state is None:
            config = apply_recipe(config, data.n_classes, explicit)
            say(f"recipe width-aware: activation {config.activation}, init {config.init}, lr {config.lr:.4g}, "
                f"output lr {config.output_lr:.4g}, dropout {config.dropout:g}")
        if comm is not None and state is None:
            from .parallel.mpi_transport import launched_workers

            explicit_workers = "workers" in explicit and args.workers != "auto"
            config = config.replace(workers=launched_workers(comm, config.workers, explicit_workers))
        warn_about_plan(config, data.n_train)
        init_seconds = None
        if state is None:
            # fit keeps its fallback model on disk (the checkpoints of the output folder), not in memory.
            config = plan_run(config, data, budget=args.memory_budget, fallback_copy=False, log=say)
            started = time.perf_counter()
            model = SparseMLP.from_config(data.n_features, data.n_classes, config)
            init_seconds = time.perf_counter() - started
            if config.workers > 1 or config.transport == "mpi":
                threads = "kernel threads: each worker's share of its machine's cores" + (
                    f", at most {config.threads}" if config.threads else "")
            elif config.threads:
                threads = f"{config.threads} thread(s)"
            else:
                threads = f"threads adapt to the machine (1 to {max_threads()}, from {default_threads()})"
            say(f"model: {model} (built in {init_seconds:.2f}s); {threads}")
        else:
            say(f"resuming {out_dir} after epoch {state['epoch']} of {config.epochs}: {model}")
        trainer = fit_parallel if config.workers > 1 or config.transport == "mpi" else fit
        summary = trainer(model, data, config, out_dir=out_dir, overwrite=args.overwrite,
                          progress=False if args.quiet else None, log=say, init_seconds=init_seconds,
                          resume=state, checkpoint_every=args.checkpoint_every, command_line=command_line)
    except (ConfigError, DataError, OutputDirError, SharedMemoryFull, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:
        print(f"error: out of memory ({error or 'an allocation was refused'}); ask for less: a smaller network "
              "(--hidden, --epsilon), batch (--batch-size, --micro-batch) or data set (--n-samples).",
              file=sys.stderr)
        return 2
    except OutputWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except WorkerFailed as error:
        print(f"error: {error} The model trained so far is in {out_dir}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        # Before training started, or a further signal while the outputs were being written.
        print(f"stopped ({error or 'Ctrl-C'}) before the outputs were written; "
              f"{_checkpoint_hint(out_dir)}", file=sys.stderr)
        return EXIT_STATUS["interrupted"]
    best = summary["best_test_accuracy"]
    final = summary["final_test_accuracy"]
    if best is not None:
        print(f"test accuracy: final {100 * final:.2f}%, best {100 * best:.2f}% "
              f"({summary['epochs_completed']} epochs, {summary['stopped']})")
    elif summary["final_test_loss"] is not None:
        print(f"final test loss {summary['final_test_loss']:.4f} ({summary['epochs_completed']} epochs, "
              f"{summary['stopped']})")
    else:
        print(f"no epoch completed ({summary['stopped']})")
    print(f"weights: {sum(summary['nnz_start'])} -> {sum(summary['nnz_end'])}; "
          f"{summary['total_seconds']:.1f}s; outputs in {out_dir}")
    if summary.get("error") and args.quiet:
        print(summary["error"], file=sys.stderr)
    if summary["stopped"] in EXIT_STATUS:
        print(f"continue with: python -m wasap.run --resume {out_dir}")
        return EXIT_STATUS[summary["stopped"]]
    return 0 if summary["stopped"] == "completed" else 1


def _checkpoint_hint(out_dir):
    path = None if out_dir is None else os.path.join(out_dir, CHECKPOINT_FILE)
    if path is not None and os.path.exists(path):
        return f"the last checkpoint is {path}: continue with `python -m wasap.run --resume {out_dir}`."
    return "no checkpoint had been written."


if __name__ == "__main__":
    warnings.showwarning = _show_warning
    sys.exit(main())
