"""The `farm` command.

Commands that render (`run`, `models make-tiny`) import the worker package lazily, so the
coordinator's commands start in a blink on a box without torch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from farm import __version__

console = Console(stderr=True, highlight=False, soft_wrap=True)  # errors stay one line
DEFAULT_MODELS = os.environ.get("FARM_MODELS", "models")
DEMO_CHECKPOINT = "seedfarm-tiny"


class FarmError(click.ClickException):
    """A user-facing error: one line, exit code 1, no traceback."""

    def show(self, file=None) -> None:
        console.print(f"[red]error:[/red] {self.format_message()}")


class InputRefused(FarmError):
    """A hostile or broken input file (an image `farm info` will not read): one line, exit code 2."""

    exit_code = 2


class SpecErrorExit(click.ClickException):
    """A spec error: `FILE:LINE:COL: message`, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        console.print(self.format_message(), markup=False)


def load_spec_or_exit(path: str | Path, models_dir: Path | None, store=None):
    from farm.spec import SpecError, load_spec

    try:
        return load_spec(path, models_dir=models_dir, store=store)
    except SpecError as e:
        raise SpecErrorExit(str(e)) from None
    except OSError as e:
        raise FarmError(f"cannot read spec {path}: {e.strerror}") from None


def need_worker_extra() -> None:
    """`farm run` renders in this process: say how to get torch instead of an ImportError.
    Looked up, not imported: the coordinator itself never loads torch."""
    from importlib.util import find_spec

    for name in ("torch", "diffusers", "transformers", "safetensors"):
        if find_spec(name) is None:
            raise FarmError(
                f"rendering needs the worker extra ({name} is missing): pip install 'seedfarm[worker]' "
                "(on a GPU box install the CUDA build of torch first, see README)"
            )


class FarmGroup(click.Group):
    """Turns Redis refusing a command for want of an ACL permission into one line naming it."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if type(e).__name__ in ("NoPermissionError", "AuthenticationError", "AuthenticationWrongNumberOfArgsError"):
                from farm.credentials import hide_passwords

                raise FarmError(f"Redis refused: {hide_passwords(str(e))} (see `farm redis-acl` for "
                                "what each role needs)") from None
            raise


@click.group(cls=FarmGroup)
@click.version_option(__version__, prog_name="seedfarm")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Farm config YAML (default: $FARM_CONFIG, ./farm.yaml, ~/.config/seedfarm/farm.yaml).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """seedfarm: batch Stable Diffusion sweeps across your PCs, A1111-compatible."""
    from farm.credentials import scrub_argv

    ctx.obj = {"config": config_path}
    if scrub_argv():
        console.print("[yellow]warning:[/yellow] a password was given on the command line; it is now hidden "
                      "from the process list, but was readable there for a moment: use "
                      "--broker-password-file, FARM_BROKER_PASSWORD or the config file instead")


def password_file_option(command):
    """--broker-password-file on every command that talks to Redis (stored for settings())."""

    def remember(ctx: click.Context, _param, value):
        if value is not None:
            ctx.find_object(dict)["broker_password_file"] = value

    return click.option("--broker-password-file", type=click.Path(dir_okay=False), default=None,
                        expose_value=False, callback=remember, is_eager=True,
                        help="File whose first line is the Redis password (or env FARM_BROKER_PASSWORD_FILE).")(command)


def settings(**flags):
    """Flags > FARM_* env vars > config file > defaults (farm/config.py)."""
    from farm.config import ConfigError, load_settings

    obj = click.get_current_context().obj
    flags.setdefault("broker_password_file", obj.get("broker_password_file"))
    try:
        return load_settings(obj["config"], **flags)
    except ConfigError as e:
        raise FarmError(str(e)) from None


def ledger_or_exit(broker_url: str):
    from farm.ledger import BrokerUnreachable, Ledger, connect

    try:
        return Ledger(connect(broker_url))
    except BrokerUnreachable as e:
        raise FarmError(str(e)) from None


def store_or_exit(url: str):
    from farm.store import open_store

    try:
        return open_store(url)
    except ValueError as e:
        raise FarmError(str(e)) from None


@main.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help="A1111/ComfyUI models folder (or env FARM_MODELS).")
def validate(spec: str, models_dir: str) -> None:
    """Check a job spec; print its axes and task count."""
    job = load_spec_or_exit(spec, Path(models_dir) if Path(models_dir).is_dir() else None)
    for line in job.describe():
        click.echo(line)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task (the queued RenderTask).")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help="Models folder, to resolve checkpoint hashes.")
@click.option("--limit", type=int, default=None, help="Stop after N tasks.")
def expand(spec: str, as_json: bool, models_dir: str, limit: int | None) -> None:
    """Print the tasks a spec expands to, in queue order."""
    from itertools import islice

    from farm.expand import expand as expand_spec

    job = load_spec_or_exit(spec, Path(models_dir) if Path(models_dir).is_dir() else None)
    for task in islice(expand_spec(job), limit):
        if as_json:
            click.echo(task.to_json())
        else:
            axes = ", ".join(f"{k}={v}" for k, v in task.axes.items())
            click.echo(f"{task.index}\t{task.id}\tseed {task.seed}\t{axes}")


def model_cache_options(depot_help: str):
    """--model-cache, --cache-size and --depot (worker/model_cache.py), as `farm worker` and `farm run`
    take them; --depot's default is the command's own (depot_help says it)."""

    def options(command):
        command = click.option("--depot", "depot_url", default=None, help=depot_help)(command)
        command = click.option("--cache-size", default="200G", show_default=True,
                               help="Most bytes the model cache holds (K, M, G, T).")(command)
        return click.option("--model-cache", default=None, type=click.Path(file_okay=False),
                            help="Folder for models fetched from the depot (default: the user's cache folder, "
                                 "~/.cache/seedfarm/models); never your models folder.")(command)

    return options


def cache_size_or_exit(text: str) -> int:
    """--cache-size in bytes (worker/model_cache.py parse_size)."""
    from worker.model_cache import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--cache-size") from None


@main.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="outputs", show_default=True,
              help="Output folder; the job gets its own subfolder.")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help="A1111/ComfyUI models folder (or env FARM_MODELS).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Most images in one diffusion call (default: from memory and image size, at most 8).")
@model_cache_options("Store whose model depot the models your folder lacks come from (default: none; "
                     "models a spec gives by URL come from their URLs either way).")
def run(spec: str | None, out_dir: str, models_dir: str, max_batch: int | None, model_cache: str | None,
        cache_size: str, depot_url: str | None) -> None:
    """Render a job here, in this process, with no servers.

    Without SPEC, renders the built-in demo sweep with the built-in tiny model (written to the
    models folder on first use). Models the job lacks are fetched into the model cache first, as
    `farm worker` fetches them: from the URLs the spec gives, and with --depot from that depot."""
    need_worker_extra()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from farm.inputs import InputError
    from farm.store import open_store
    from worker.local import run_local
    from worker.model_cache import CacheConfigError
    from worker.service import open_model_cache

    if spec is None:
        spec = ensure_demo(Path(models_dir))
    try:
        cache = open_model_cache(model_cache, cache_size_or_exit(cache_size), depot_url)
    except CacheConfigError as e:
        raise FarmError(str(e)) from None
    models = Path(f"{models_dir}{os.pathsep}{cache.root}")  # the cache is searched after yours, as a worker's
    store = open_store(out_dir)
    if cache.depot is not None:  # names your folder lacks come from the depot: then the spec pins them
        fetch_or_exit(load_spec_or_exit(spec, None, store), cache, models)
    job = load_spec_or_exit(spec, models, store)  # the store: where init_images: {job: ...} looks
    if job.links:  # models given by URL: fetched and verified before anything renders
        fetch_or_exit(job, cache, models)
    console.print(f"job [bold]{job.job_id}[/bold]: {job.task_count()} tasks, {job.image_count()} images "
                  f"-> {store.describe(job.job_id)}")
    columns = [TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("images", total=job.image_count())
        try:
            summary = run_local(job, store, models, on_images=lambda n: progress.advance(bar, n), max_batch=max_batch,
                                model_cache=cache)
        except InputError as e:  # an input file changed between reading the spec and storing it
            raise FarmError(str(e)) from None
    for line in summary.failed:  # worker or store text: printed as it is, never read as markup
        console.print(f"[red]failed:[/red] {escape(line)}", markup=True)
    console.print(
        f"{summary.images} images rendered in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.2f} images/s)"
        + (f", {summary.skipped} already done" if summary.skipped else "")
        + f"; manifest: {summary.manifest_lines} lines"
    )
    for key in summary.sheets:
        console.print(f"contact sheet: {store.describe(key)}")
    if summary.failed:
        raise FarmError(f"{len(summary.failed)} task(s) failed; rerun the same command to retry only those")


def fetch_or_exit(job, cache, models: Path) -> None:
    """`farm run`: the job's models that neither the models folder nor the cache hold, fetched
    (worker/local.py fetch_models); one that cannot be (offline, a wrong sha256) is one line."""
    from worker.context import TaskError
    from worker.local import fetch_models
    from worker.model_cache import DepotUnreachable

    log = logging.getLogger("seedfarm.worker")
    level = log.level
    log.setLevel(logging.ERROR)  # its warnings (a retry, a URL not answering) would repeat the one line
    with console.status("fetching models") as shown:
        cache.report = lambda text: shown.update(f"fetching {text}" if text else "fetching models")
        try:
            fetched = fetch_models(job, cache, models)
        except (DepotUnreachable, TaskError) as e:
            raise FarmError(str(e)) from None
        finally:
            log.setLevel(level)
    for line in fetched:
        console.print(f"fetched {escape(line)}", markup=True)


def ensure_demo(models: Path) -> str:
    """The packaged demo spec; writes the tiny model into the models folder if it is not there."""
    from farm.checkpoints import find_checkpoints

    have = find_checkpoints(models) if models.is_dir() else {}
    if DEMO_CHECKPOINT not in have:
        from worker.tiny import make_tiny

        path = make_tiny(models, DEMO_CHECKPOINT)
        console.print(f"wrote the built-in tiny model to {path}")
    return str(resources.files("farm") / "data" / "demo.yaml")


@main.command()
@click.argument("job")
@click.option("--x", "x_axis", default=None, help="Axis on columns (default: the spec's grid.x, else the one with most values).")
@click.option("--y", "y_axis", default=None, help="Axis on rows (default: the next).")
@click.option("--z", "z_axis", default=None, help="Axis whose values get separate sheets (default: every other axis).")
@click.option("--filter", "filters", multiple=True, metavar="AXIS=VALUE", help="Only images with this value (repeatable).")
@click.option("--max-size", type=int, default=None, help="Cap on a sheet's side in pixels: thumbnails, then pages.")
@click.option("--store", "store_url", default=None, help="The job's store (folder or s3://...); then JOB is a job id.")
def grid(job, x_axis, y_axis, z_axis, filters, max_size, store_url) -> None:
    """Rebuild the contact sheets of a job: a job folder (OUT_DIR/JOB), or a job id with --store."""
    from farm.jobs import write_job_outputs
    from farm.sheets import MAX_SIDE
    from farm.store import layout

    path = Path(job)
    if store_url is None and (path / layout.RECORDS).is_dir():
        store, job = store_or_exit(str(path.resolve().parent)), path.resolve().name
    else:
        store = store_or_exit(store_url or settings().store)
        if not any(True for _ in store.list_keys(layout.records_prefix(job))):
            raise FarmError(f"no job {job} with finished images in {store.describe()}: "
                            "pass OUT_DIR/JOB, or the job id with --store")
    wanted = {}
    for item in filters:
        axis, sep, value = item.partition("=")
        if not sep or not axis.strip():
            raise FarmError(f"--filter {item}: expected AXIS=VALUE, e.g. --filter sampler='Euler a'")
        wanted[axis.strip()] = value.strip()
    try:
        outputs = write_job_outputs(store, job, x=x_axis, y=y_axis, z=z_axis, filters=wanted,
                                    max_side=max_size or MAX_SIDE)
    except ValueError as e:
        raise FarmError(str(e)) from None
    if not outputs.manifest_lines:
        raise FarmError(f"no finished images in {store.describe(job)}: nothing to put on a sheet")
    for key in outputs.sheets:
        click.echo(store.describe(key))


@main.command()
@click.option("--store", "store_url", default=None, help="The store to review: a folder or s3://... (or env FARM_STORE).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: the whole network).")
@click.option("--port", type=int, default=8188, show_default=True)
@click.option("--export", "export_job", default=None, metavar="JOB",
              help="Instead of serving, write the page as static files into JOB/review/ (a job id, or OUT_DIR/JOB).")
@click.option("--token", envvar="FARM_REVIEW_TOKEN", default=None, show_envvar=True,
              help="Token of the review role (view and star). Needed on any address but 127.0.0.1: "
                   "one is made and printed when not given.")
@click.option("--view-token", envvar="FARM_REVIEW_VIEW_TOKEN", default=None, show_envvar=True,
              help="Token of the view role (look, no stars).")
def review(store_url, host, port, export_job, token, view_token) -> None:
    """Serve the review page: jobs, live grids, zoom, shared stars, export of the stars."""
    from farm.review.server import Access, export_page, is_loopback, make_server, new_token
    from farm.store import layout

    if export_job and store_url is None and (Path(export_job) / layout.JOB_RECORD).is_file():
        store_url, export_job = str(Path(export_job).resolve().parent), Path(export_job).resolve().name
    store = store_or_exit(store_url or settings().store)
    if export_job:
        try:
            keys = export_page(store, export_job)
        except FileNotFoundError:
            raise FarmError(f"no job {export_job} in {store.describe()} (pass OUT_DIR/JOB, or --store)") from None
        except ValueError as e:
            raise FarmError(str(e)) from None
        click.echo(store.describe(keys[0]))
        return
    if not token and not view_token and not is_loopback(host):
        token = new_token()
    try:
        server = make_server(store, host, port, Access(token or None, view_token or None))
    except OSError as e:
        raise FarmError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    query = f"?token={token}" if token else ""
    console.print(f"reviewing {store.describe()} at http://{host}:{server.server_address[1]}/{query}  (Ctrl+C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the parsed parameters as JSON.")
@click.option("--as-spec", is_flag=True, help="Print a job spec that renders the image again.")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help="Models folder, to find the image's checkpoint by its hash.")
def info(image: str, as_json: bool, as_spec: bool, models_dir: str) -> None:
    """Print an image's A1111 parameters (PNG Info; JPEG/WebP EXIF too)."""
    from farm.infotext import ImageReadError, parse_infotext, read_parameters

    try:
        text = read_parameters(Path(image))
    except ImageReadError as e:
        raise InputRefused(f"{image}: {e}") from None
    except OSError as e:  # the file itself (permissions, a folder)
        raise FarmError(f"{image}: cannot read it ({e.strerror})") from None
    if text is None:
        raise FarmError(f"{image} has no A1111 'parameters' text")
    if as_spec:
        from farm.recreate import RecreateError, spec_from_infotext

        try:
            click.echo(spec_from_infotext(text, Path(models_dir)), nl=False)
        except RecreateError as e:
            raise FarmError(f"{image}: {e}") from None
        return
    if not as_json:
        click.echo(text)
        return
    prompt, negative, params = parse_infotext(text)
    click.echo(json.dumps({"prompt": prompt, "negative_prompt": negative, **params}, ensure_ascii=False))


@main.group()
def prompt() -> None:
    """A1111 prompt tools."""


@prompt.command("count")
@click.argument("text")
@click.option("--steps", type=int, default=20, show_default=True, help="Steps, for prompt editing.")
def prompt_count(text: str, steps: int) -> None:
    """Count a prompt's CLIP tokens like A1111's UI: 86/150."""
    need_worker_extra()
    from worker.conditioning import count_text

    click.echo(count_text(text, steps))


@main.group()
def models() -> None:
    """Model files: list them, write the built-in tiny test model."""


@models.command("make-tiny")
@click.argument("models_dir", type=click.Path(file_okay=False))
@click.option("--name", default=None,
              help=f"File name (stem); default: {DEMO_CHECKPOINT} for SD1.5 and SDXL, the family's own otherwise.")
@click.option("--family", "family_name", default=None,
              help='The model family, as `farm models list` names it, e.g. "SDXL", "Flux.1 [dev]" '
                   "(default: SD1.5, plus the other tiny models the example jobs in jobs/ use).")
@click.option("--sdxl", is_flag=True, help="Same as --family SDXL.")
def make_tiny_cmd(models_dir: str, name: str | None, family_name: str | None, sdxl: bool) -> None:
    """Write a tiny random-weight model of a family into MODELS_DIR, in its users' layout (SD: an
    A1111 checkpoint; Flux and other families built from parts: the denoiser in diffusion_models/
    and its text encoders and VAE beside it), the tiny upscaler models (ESRGAN/, RealESRGAN/,
    upscale_models/) and small input images in MODELS_DIR/inputs/ for the example specs (SD1.5 also:
    the tiny inpainting checkpoint and masks in MODELS_DIR/masks/). Prints the checkpoint's path."""
    need_worker_extra()
    from worker.tiny import (TINY_WRITERS, make_tiny_inpaint, make_tiny_inputs, make_tiny_masks,
                             write_example_models, write_tiny_family)
    from worker.tiny_upscalers import write_tiny_upscalers

    examples = family_name is None and not sdxl and name is None  # the plain command
    family_name = "SDXL" if sdxl else family_name or "SD1.5"
    if family_name not in TINY_WRITERS:
        raise click.BadParameter(f"no tiny model for '{family_name}'; one of: {', '.join(TINY_WRITERS)}",
                                 param_hint="--family")
    if family_name in ("SD1.5", "SDXL") and name is None:  # as before --family
        name = DEMO_CHECKPOINT
    click.echo(write_tiny_family(Path(models_dir), family_name, name))
    make_tiny_inputs(Path(models_dir))  # the example specs' input images (init_images: inputs/...)
    write_tiny_upscalers(Path(models_dir))  # and their upscaler models (hr_upscaler, upscaler)
    if family_name == "SD1.5":  # jobs/inpaint.yaml's inpainting checkpoint and masks
        make_tiny_inpaint(Path(models_dir))
        make_tiny_masks(Path(models_dir))
    if examples:  # one line per file, the SD1.5 checkpoint first (as always)
        for path in write_example_models(Path(models_dir)):
            click.echo(path)


@models.command("list")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help=f"Models folder(s), several joined by '{os.pathsep}'.")
@click.option("--kind", type=click.Choice(["checkpoint", "lora", "vae", "embedding", "upscaler"]), default=None,
              help="Only this kind of file.")
@click.option("--store", "store_url", default=None, help="List the model depot in this store instead (farm models push).")
def models_list(models_dir: str, kind: str | None, store_url: str | None) -> None:
    """List checkpoints, text encoders, LoRAs, VAEs, embeddings and upscalers: kind, family (an
    upscaler's architecture), precision, size, A1111 hash, name."""
    from farm.models import KINDS, ModelFileError, Registry, human_size

    if store_url:
        from farm.depot import Depot

        depot = Depot(store_or_exit(store_url))
        records = [r for r in depot.records() if not kind or r.kind == kind]
        for r in records:
            source = f"  <- {r.url}" if r.url else ""
            click.echo(f"{r.kind:<12} {r.family:<17} {human_size(r.size):>9}  {r.a1111_hash:<12}  {r.sha256[:16]}  "
                       f"{r.name}{source}")
        if not records:
            raise FarmError(f"no {kind or 'model'} files in the depot of {depot.describe()} (farm models push)")
        return
    registry = Registry(models_dir)
    count = 0
    for k in [kind] if kind else KINDS:
        for m in registry.unique_files(k):
            try:
                family, precision, digest = m.family(), m.precision(), m.a1111_hash()
            except ModelFileError as e:  # a broken file is listed with its problem, not skipped
                family, precision, digest = "broken", "?", str(e).split(": ", 1)[-1]
            click.echo(f"{k:<12} {family:<17} {precision:<10} {human_size(m.size):>9}  {digest:<12}  {m.name}")
            count += 1
    if not count:
        raise FarmError(f"no {kind or 'model'} files in {models_dir}")


@models.command("push")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|PATH...")
@click.option("--store", "store_url", default=None, help="The store holding the depot (or env FARM_STORE).")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=DEFAULT_MODELS,
              show_default=True, help=f"Models folder(s) NAMEs are looked up in, several joined by '{os.pathsep}'.")
@click.option("--kind", type=click.Choice(["checkpoint", "lora", "vae", "embedding", "text_encoder"]), default=None,
              help="What the NAMEs are (default: the first kind that has the name; a PATH's folder says).")
def models_push(refs: tuple[str, ...], store_url: str | None, models_dir: str, kind: str | None) -> None:
    """Upload models into the store's model depot, under their sha256, so workers that lack them
    fetch them (farm worker --model-cache). Skips what the depot has; a stopped upload resumes."""
    from farm.depot import Depot, DepotError, model_to_push
    from farm.models import Registry

    depot = Depot(store_or_exit(store_url or settings().store))
    registry = Registry(models_dir)
    try:
        push_to_depot(depot, [model_to_push(ref, registry, kind) for ref in refs])
    except DepotError as e:
        raise FarmError(str(e)) from None


@models.command("link")
@click.argument("name")
@click.argument("url")
@click.option("--sha256", "sha256", required=True, help="The file's SHA-256 (64 hex): what workers verify.")
@click.option("--kind", type=click.Choice(["checkpoint", "lora", "vae", "embedding", "text_encoder"]),
              default="checkpoint", show_default=True)
@click.option("--size", type=click.IntRange(min=1), default=None, help="Bytes (default: asked of the URL).")
@click.option("--store", "store_url", default=None, help="The store holding the depot (or env FARM_STORE).")
def models_link(name, url, sha256, kind, size, store_url) -> None:
    """Put a model kept at a URL into the depot under NAME, pinned by its sha256:
    hf://ORG/REPO/FILE.safetensors (the Hugging Face hub) or any https URL (e.g. a civitai download
    link). Workers that lack it fetch it from there, verify the pin and cache it."""
    from farm.depot import Depot, DepotError

    depot = Depot(store_or_exit(store_url or settings().store))
    try:
        record = depot.link(kind, name, url, sha256, size)
    except DepotError as e:
        raise FarmError(str(e)) from None
    console.print(f"linked: {record.kind} {record.name} -> {record.url} (sha256 {record.sha256[:16]})")


def push_to_depot(depot, files: list) -> None:
    """Push model files with a progress bar (MB/s); a line per file: sent, or already there."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True) as progress:
        for model in files:
            bar = progress.add_task(f"{model.kind} {model.name}", total=model.size)
            try:
                record, sent = depot.push(model, lambda n, bar=bar: progress.advance(bar, n))
            except OSError as e:
                raise FarmError(f"cannot push {model.path} to {depot.describe()}: {e}") from None
            progress.remove_task(bar)
            console.print(f"{'pushed' if sent else 'in the depot already'}: {model.kind} {record.name} "
                          f"({record.a1111_hash}, sha256 {record.sha256[:16]})")


BROKER_HELP = "Redis URL, e.g. redis://:PASSWORD@HOST:6379/0 (or env FARM_BROKER_URL)."
STORE_HELP = "Output store: a folder or s3://bucket/prefix (or env FARM_STORE)."


@main.group(invoke_without_command=True)
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
@click.option("--models", "models_dir", default=None, help="A1111/ComfyUI models folder (or env FARM_MODELS).")
@click.option("--name", default=None, help="Worker name shown in `farm workers` (default: HOST-gpuN).")
@click.option("--gpu", type=int, default=None, help="GPU index this process renders on (one process per GPU).")
@click.option("--store", "store_url", default=None,
              help="Use this store instead of the job's (e.g. the same NAS mounted at another path).")
@click.option("--max-pixels", type=int, default=None,
              help="Most pixels (width x height x batch) one render may have here (default: from VRAM).")
@click.option("--tags", default="", help="Comma-separated tags this worker offers, for specs' `requires:`.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Most images in one diffusion call; tasks that differ only in seed or prompt share one "
                   "(default: from VRAM and image size, at most 8).")
@click.option("--vram", type=click.Choice(["auto", "high", "med", "low"]), default=None,
              help="Memory profile: high = all on the GPU, med/low = offload (A1111 --medvram/--lowvram). Default auto.")
@click.option("--precision", type=click.Choice(["auto", "fp16", "bf16", "fp32"]), default=None,
              help="Weights precision on the GPU (default fp16; a CPU-only worker always runs fp32).")
@click.option("--attention", type=click.Choice(["sdpa", "xformers"]), default=None, help="Attention kernel (default sdpa).")
@click.option("--no-half-vae", is_flag=True, default=None, help="Keep the VAE in float32 (A1111 --no-half-vae).")
@click.option("--allow-pickle", is_flag=True, default=None,
              help="Also read pickled .ckpt/.pt files (weights only, never code). Default: .safetensors only.")
@click.option("--pause-when-busy", is_flag=True, default=None,
              help="Take no new task while another process uses this GPU (a game, another AI app).")
@click.option("--games", default=None, metavar="EXE,EXE",
              help="Take no new task while one of these programs runs, e.g. eldenring.exe,cs2.exe.")
@click.option("--hours", default=None, metavar="HH:MM-HH:MM",
              help="Take tasks only in these hours, e.g. 01:00-08:00 (several: comma-separated).")
@click.option("--user-idle", type=float, default=None, metavar="SECONDS",
              help="Take tasks only after this long without keyboard or mouse input (Windows).")
@click.option("--resume-after", type=float, default=None, metavar="SECONDS",
              help="After a game, the GPU or the user stops, wait this long before taking tasks (default 60).")
@click.option("--yield-now", is_flag=True, default=None,
              help="On a pause, hand the running task back after its diffusion batch instead of finishing it.")
@model_cache_options("Store whose model depot this worker fetches from (default: --store, else the farm's store).")
@click.option("--no-backups", is_flag=True, default=False,
              help="Never render a backup copy of a slower worker's task when idle (docs/workers.md, Mixed cards).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx, broker, models_dir, name, gpu, store_url, max_pixels, tags, max_batch, vram, precision, attention,
           no_half_vae, allow_pickle, pause_when_busy, games, hours, user_idle, resume_after, yield_now,
           model_cache, cache_size, depot_url, no_backups, loglevel) -> None:
    """Render tasks from the farm's queue until stopped (Ctrl+C finishes the current task first).

    `farm worker pause NAME` / `farm worker resume NAME` step a worker aside from any PC."""
    if ctx.invoked_subcommand is not None:
        ctx.obj["broker"] = broker
        return
    need_worker_extra()
    from farm.ledger import BrokerUnreachable
    from worker.memory import ProfileError
    from worker.pause import PauseConfigError
    from worker.model_cache import CacheConfigError
    from worker.service import run_worker

    cache_bytes = cache_size_or_exit(cache_size)
    try:
        code = run_worker(settings(broker_url=broker, models=models_dir, vram=vram, precision=precision,
                                   attention=attention, no_half_vae=no_half_vae, allow_pickle=allow_pickle,
                                   pause_when_busy=pause_when_busy, games=games, hours=hours, user_idle=user_idle,
                                   resume_after=resume_after, yield_now=yield_now),
                   name, gpu, store_url, loglevel,
                   max_pixels=max_pixels, tags=frozenset(t.strip() for t in tags.split(",") if t.strip()),
                   max_batch=max_batch, model_cache=model_cache, cache_size=cache_bytes, depot_url=depot_url,
                   backup_renders=not no_backups)
    except (BrokerUnreachable, FileNotFoundError, ProfileError, PauseConfigError, CacheConfigError) as e:
        raise FarmError(str(e)) from None
    if code:  # stopped by an error (Celery logged it): a supervisor must see a failure and restart it
        raise FarmError(f"worker stopped with exit code {code}")


@worker.command("pause")
@click.argument("name")
@click.option("--broker", default=None, help=BROKER_HELP)
@click.option("--reason", default=None, help="What `farm workers` shows (default: who paused it).")
@click.pass_context
def worker_pause(ctx, name, broker, reason) -> None:
    """Step worker NAME aside: it finishes its task and takes no new one until `resume`."""
    import socket

    ledger = ledger_or_exit(settings(broker_url=broker or ctx.obj.get("broker")).broker_url)
    known = {w.get("name") for w in ledger.workers()}
    ledger.request_pause(name, reason or f"paused from {socket.gethostname()} (farm worker resume {name})")
    click.echo(f"paused {name}" + ("" if name in known else " (not running now: it starts paused)"))


@worker.command("resume")
@click.argument("name")
@click.option("--broker", default=None, help=BROKER_HELP)
@click.pass_context
def worker_resume(ctx, name, broker) -> None:
    """Let worker NAME take tasks again (after `farm worker pause NAME`)."""
    ledger = ledger_or_exit(settings(broker_url=broker or ctx.obj.get("broker")).broker_url)
    if not ledger.clear_pause(name):
        raise FarmError(f"worker {name} was not paused with `farm worker pause`")
    click.echo(f"resumed {name}")


@main.command()
@click.option("--broker", required=True, help="The farm's Redis URL, e.g. redis://:PASSWORD@192.168.1.10:6379/0.")
@click.option("--models", "models_dir", required=True, help="Your A1111/ComfyUI models folder.")
@click.option("--name", default=None, help="This worker's name in `farm workers` (default: HOST-gpuN).")
@click.option("--games", default=None, metavar="EXE,EXE", help="Programs that pause the worker while they run.")
@click.option("--pause-when-busy", is_flag=True, help="Pause while another process uses the GPU.")
@click.option("--hours", default=None, metavar="HH:MM-HH:MM", help="Render only in these hours.")
@click.option("--user-idle", type=float, default=0.0, metavar="SECONDS", help="Render only after this long without input.")
@click.option("--path", "path", type=click.Path(dir_okay=False), default=None,
              help="Where to write (default: ~/.config/seedfarm/farm.yaml, where `farm` looks).")
def setup(broker, models_dir, name, games, pause_when_busy, hours, user_idle, path) -> None:
    """Write this PC's worker config, so that a bare `farm worker` joins the farm
    (scripts/install-worker.ps1 runs it)."""
    from farm.setup_config import SetupError, default_config_path, worker_config, write_config

    try:
        config = worker_config(broker, models_dir, name, games=games, pause_when_busy=pause_when_busy,
                               hours=hours, user_idle=user_idle)
    except SetupError as e:
        raise FarmError(str(e)) from None
    written = write_config(Path(path) if path else default_config_path(), config)
    click.echo(str(written))


def push_job_models(job, store, models: Path) -> None:
    """`farm submit --push-models`: the job's models that the depot lacks, pushed first."""
    from farm.depot import Depot, DepotError, job_models
    from farm.expand import expand
    from farm.models import Registry

    files, problems = job_models(expand(job), Registry(models))
    for line in problems:
        console.print(f"[yellow]warning:[/yellow] not pushed: {line}", markup=True)
    try:
        push_to_depot(Depot(store), files)
    except DepotError as e:
        raise FarmError(str(e)) from None


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
@click.option("--store", "store_url", default=None, help=STORE_HELP)
@click.option("--models", "models_dir", default=None,
              help="Models folder, to check checkpoint names and pin their hashes before queueing.")
@click.option("--push-models", is_flag=True,
              help="First push the models the job names and the store's depot lacks (farm models push).")
def submit(spec, broker, store_url, models_dir, push_models) -> None:
    """Queue a job's tasks for the farm's workers; prints the job id."""
    from farm.dispatch import submit as submit_job
    from farm.inputs import InputError
    from farm.ledger import BrokerUnreachable, safe_url

    conf = settings(broker_url=broker, store=store_url, models=models_dir)
    models = Path(conf.models)
    store = store_or_exit(conf.store)
    job = load_spec_or_exit(spec, models if models.is_dir() else None, store)
    if push_models:
        push_job_models(job, store, models)
    try:
        count = submit_job(job, store, conf.broker_url, models if models.is_dir() else None,
                           warn=lambda line: console.print(f"[yellow]warning:[/yellow] {escape(line)}", markup=True))
    except (BrokerUnreachable, InputError) as e:
        raise FarmError(str(e)) from None
    click.echo(job.job_id)
    console.print(f"queued {count} tasks ({job.image_count()} images) on {safe_url(conf.broker_url)}; "
                  f"results -> {store.describe(job.job_id)}\nwatch: farm status {job.job_id} --watch")


@main.command()
@click.argument("job")
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
@click.option("--watch", is_flag=True, help="Update live until the job finishes.")
def status(job, broker, watch) -> None:
    """A job's progress: queued / running / done / failed, per-worker speed, ETA, sheets."""
    from farm.status import show_status

    ledger = ledger_or_exit(settings(broker_url=broker).broker_url)
    if not show_status(ledger, job, watch=watch):
        raise FarmError(f"no job {job} in Redis (`farm jobs` lists them; `farm resume {job}` "
                        "restores one from its store)")


@main.command()
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
def jobs(broker) -> None:
    """List the farm's jobs."""
    from farm.status import list_jobs

    list_jobs(ledger_or_exit(settings(broker_url=broker).broker_url))


@main.command()
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
def workers(broker) -> None:
    """List live workers: name, GPU, VRAM, loaded checkpoint, images done, last seen."""
    from farm.status import list_workers

    list_workers(ledger_or_exit(settings(broker_url=broker).broker_url))


@main.command("redis-acl")
@click.option("--role", type=click.Choice(["worker", "submitter", "viewer"]), default=None,
              help="Only this role's line (default: all three).")
@click.option("--db", type=click.IntRange(min=0), default=0, show_default=True,
              help="The database number in the farm's broker URL (redis://HOST:6379/DB).")
def redis_acl(role, db) -> None:
    """Print Redis ACL users (aclfile lines) that grant each role only the farm's keys and commands."""
    from farm.acl import ROLES, acl_line

    click.echo("# put these in Redis' aclfile (or run ACL SETUSER with the part after 'user'),")
    click.echo("# each with its own long random password, and switch the default user off: user default off")
    for name in [role] if role else ROLES:
        click.echo(acl_line(name, db=db))


@main.command("dead-letters")
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--clear", is_flag=True, help="Delete them all after printing.")
def dead_letters_cmd(broker, limit, clear) -> None:
    """Messages the workers refused (not JSON, wrong schema, too large, an untrusted store ...)."""
    import time

    from farm.guard import DEAD_LETTERS, dead_letter_count, dead_letters

    ledger = ledger_or_exit(settings(broker_url=broker).broker_url)
    for d in dead_letters(ledger.r, limit):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.get("time", 0)))
        click.echo(f"{when}  {d.get('queue', '')}  {d.get('bytes', 0)} bytes  {d.get('reason', '')}")
    count = dead_letter_count(ledger.r)
    if clear:
        ledger.r.delete(DEAD_LETTERS)
    console.print(f"{count} dead letter(s)" + (", cleared" if clear else ""))


@main.command()
@click.argument("job")
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
def cancel(job, broker) -> None:
    """Cancel a job: workers skip its remaining tasks; what is rendered stays in the store."""
    ledger = ledger_or_exit(settings(broker_url=broker).broker_url)
    if not ledger.job_info(job):
        raise FarmError(f"no job {job} in Redis")
    ledger.set_status(job, "cancelled")
    click.echo(f"cancelled {job}")


@main.command()
@click.argument("job")
@click.option("--broker", default=None, help=BROKER_HELP)
@password_file_option
@click.option("--store", "store_url", default=None, help=STORE_HELP)
def resume(job, broker, store_url) -> None:
    """Re-queue every task of JOB whose output is not in the store (after a crash or a Redis loss)."""
    from farm.dispatch import resume as resume_job
    from farm.jobs import read_job
    from farm.ledger import BrokerUnreachable
    from farm.spec import SpecError

    conf = settings(broker_url=broker, store=store_url)
    store = store_or_exit(conf.store)
    try:
        stored = read_job(store, job)
    except FileNotFoundError:
        raise FarmError(f"no job {job} in store {store.url} (give the job's store with --store)") from None
    try:
        spec = stored.spec()
    except SpecError as e:
        raise SpecErrorExit(str(e)) from None
    try:
        done, queued = resume_job(spec, store, conf.broker_url)
    except BrokerUnreachable as e:
        raise FarmError(str(e)) from None
    click.echo(f"{job}: {done} tasks already in the store, {queued} re-queued")


if __name__ == "__main__":
    sys.exit(main())
