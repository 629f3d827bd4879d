"""The occystrap command line: thin commands over the library."""

import contextlib
import dataclasses
import functools
import logging
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Iterator

import click

from occystrap import __version__, pipeline, progress
from occystrap.credentials import (
    CredentialSource, Credentials, find_credentials)
from occystrap.errors import InvalidReference, OccystrapError
from occystrap.humanize import human_size
from occystrap.image import ImageWriter
from occystrap.manifest import Platform
from occystrap.options import TransportOptions
from occystrap.reference import ImageReference
from occystrap.terminal import ProgressDisplay, printable
from occystrap.tls import DEFAULT_CERTS_D


LOG = logging.getLogger("occystrap")
# A query string may be a signature (signed blob URLs carry their authority
# there); requests puts whole URLs into its exception texts.
_QUERY_RE = re.compile(r"(/[^\s'\"?]*)\?[^\s'\"()<>]+")
# user:password@host in a URL.
_USERINFO_RE = re.compile(r"(//)[^/@\s'\"]+@")
# Ended like Ctrl-C: cleaned up, then exit 128 + the signal's number.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a dropped ssh session): handled as Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the group's options decide for every command."""

    verbose: bool
    quiet: bool
    progress: bool
    parallel: int
    platform: Platform
    platform_required: bool
    transport: TransportOptions
    credentials: Credentials | None


# What a command stopped midway leaves behind, where it is not nothing.
_LEFT_WHEN_INTERRUPTED = {
    "push": "what was pushed stays (an image's manifest goes up only "
            "after all its blobs), and pushing again skips those blobs",
    "fetch-to-bundle": "the bundle keeps every blob it verified, and the "
                       "next run into it resumes from there",
}


class OccystrapGroup(click.Group):
    """Turns library errors into one-line messages and exit codes, once."""

    def invoke(self, ctx: click.Context):
        try:
            with _stop_signals_interrupt():
                return super().invoke(ctx)
        except OccystrapError as e:
            self._explain(ctx)
            raise click.ClickException(_scrub(str(e))) from None
        except Stopped as e:
            self._interrupt(ctx, e.signum)
        except KeyboardInterrupt:
            self._interrupt(ctx)
        except (click.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except Exception as e:
            if _interrupted(e):
                # Ctrl-C that landed inside a lock's release surfaces as
                # the RuntimeError it caused; it is still an interrupt.
                self._interrupt(ctx)
            # A bug: still one line unless --verbose.
            self._explain(ctx)
            raise click.ClickException(_scrub(
                f"internal error: {type(e).__name__}: {e}; rerun with "
                "--verbose and report it")) from None

    @staticmethod
    def _interrupt(ctx: click.Context,
                   signum: int = signal.SIGINT) -> None:
        name = "" if signum == signal.SIGINT \
            else f" by {signal.Signals(signum).name}"
        left = _LEFT_WHEN_INTERRUPTED.get(ctx.invoked_subcommand or "",
                                          "nothing was written")
        try:
            click.echo(f"\nInterrupted{name}; {left}.", err=True)
        except OSError:
            pass  # the terminal went with the ssh session that hung up
        ctx.exit(128 + signum)

    @staticmethod
    def _explain(ctx: click.Context) -> None:
        settings = ctx.find_object(Settings)
        if settings and settings.verbose:
            click.echo(_scrub(traceback.format_exc().rstrip(),
                              keep_newlines=True), err=True)


@contextlib.contextmanager
def _progress(settings: Settings) -> Iterator[progress.Callback]:
    """Where a command reports progress: bars on stderr, when asked for."""
    display = ProgressDisplay(sys.stderr) if settings.progress else None
    try:
        yield display or progress.ignore
    finally:
        if display:
            display.close()


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Stopped in the main thread, so the same
    cleanup as for Ctrl-C runs: no temporary file is left behind.

    Only the first one counts: a second must not cut the cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = False

    def stop(signum: int, frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise Stopped(signum)

    before = {number: signal.signal(number, stop)
              for number in _STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _interrupted(error: BaseException) -> bool:
    seen = error.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def _scrub(text: str, keep_newlines: bool = False) -> str:
    """Fit for the terminal: no signed-URL query, no password, and no
    control character from whatever input the text quotes."""
    text = _USERINFO_RE.sub(r"\1***@", _QUERY_RE.sub(r"\1?…", text))
    return printable(text, keep_newlines)


def _say(text: str, err: bool = False) -> None:
    """Print one line built (in part) from input."""
    click.echo(printable(text), err=err)


def _reference(registry: str, image: str, tag: str) -> ImageReference:
    """A malformed name is a wrong command line: exit 2, as click's own."""
    try:
        return ImageReference.parse(registry, image, tag)
    except InvalidReference as e:
        raise click.UsageError(str(e)) from None


pass_settings = click.make_pass_decorator(Settings)


def _platform(ctx, param, value):
    if value is None:
        return None
    try:
        return Platform.parse(value)
    except OccystrapError as e:
        raise click.BadParameter(str(e)) from None


@click.group(cls=OccystrapGroup, context_settings={
    "help_option_names": ["-h", "--help"], "auto_envvar_prefix": "OCCYSTRAP"})
@click.version_option(__version__, prog_name="occystrap")
@click.option("--platform", callback=_platform, metavar="OS/ARCH[/VARIANT]",
              help="Platform to pick from a multi-platform image, like "
                   "docker's --platform (default linux/amd64).")
@click.option("--os", "os_", default=None, envvar="OCCYSTRAP_OS",
              help="Platform OS (default linux).")
@click.option("--architecture", default=None,
              help="Platform architecture (default amd64).")
@click.option("--variant", default=None, help="Platform variant, e.g. v8.")
@click.option("--username", default=None,
              help="Registry username (default: from docker's or podman's "
                   "login files).")
@click.option("--password", default=None,
              help="Registry password or token; --password-stdin keeps it "
                   "out of the process list.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input.")
@click.option("--insecure", is_flag=True,
              help="Do not verify the registry's TLS certificate.")
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM file of CAs to trust for the registry, besides the "
                   "system's.")
@click.option("--certs-d", type=click.Path(file_okay=False),
              default=str(DEFAULT_CERTS_D), show_default=True,
              help="docker's per-registry CA directory: HOST[:PORT]/*.crt "
                   "files are trusted for that registry.")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0,
              show_default=True,
              help="Seconds to wait for a stalled connection.")
@click.option("--retries", type=click.IntRange(min=0), default=4,
              show_default=True,
              help="Retries of a failed request or interrupted download.")
@click.option("--retry-delay", type=click.FloatRange(min=0), default=1.0,
              show_default=True,
              help="Seconds before the first retry; doubles each time.")
@click.option("-j", "--parallel", type=click.IntRange(min=1, max=32),
              default=pipeline.DEFAULT_PARALLEL, show_default=True,
              help="Layers to download at once.")
@click.option("--progress/--no-progress", default=None,
              help="Draw progress bars (default: when stderr is a "
                   "terminal).")
@click.option("-q", "--quiet", is_flag=True,
              help="Print errors only.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show each step, and a traceback on errors.")
@click.pass_context
def cli(ctx, platform, os_, architecture, variant, username, password,
        password_stdin, insecure, ca_cert, certs_d, timeout, retries,
        retry_delay, parallel, progress, quiet, verbose):
    """Fetch container images from registries, without Docker or root.

    \b
    Examples:
      occystrap fetch-to-tarfile registry-1.docker.io library/busybox \\
          latest busybox.tar
      docker load -i busybox.tar
    """
    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other")
    ctx.call_on_close(_configure_logging(verbose, quiet))
    if progress is None:
        progress = not quiet and sys.stderr.isatty()
    explicit = platform is not None or any((os_, architecture, variant))
    if platform is None:
        platform = Platform(os_ or "linux", architecture or "amd64", variant)
    credentials = _explicit_credentials(ctx, username, password,
                                        password_stdin)
    ctx.obj = Settings(
        verbose=verbose,
        quiet=quiet,
        progress=progress,
        parallel=parallel,
        platform=platform,
        platform_required=explicit,
        transport=TransportOptions(
            verify=False if insecure else (ca_cert or True),
            certs_d=certs_d,
            # Connecting never takes longer than a stall may; a long
            # --timeout (a slow link) earns a longer time without progress.
            connect_timeout=min(15.0, timeout), read_timeout=timeout,
            give_up_after=max(90.0, 3 * timeout),
            retries=retries, backoff=retry_delay),
        credentials=credentials)


# Scripts set global options once, as OCCYSTRAP_<OPTION>: say so in --help.
for _option in cli.params:
    if isinstance(_option, click.Option) and _option.name not in (
            "version", "help"):
        _option.show_envvar = True


def _explicit_credentials(ctx: click.Context, username: str | None,
                          password: str | None,
                          password_stdin: bool) -> Credentials | None:
    """Credentials from options or OCCYSTRAP_* variables, if any."""
    if password_stdin:
        if ctx.get_parameter_source("password") \
                == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(
                "--password and --password-stdin are mutually exclusive")
        if not username:
            raise click.UsageError("--password-stdin needs --username")
        # As docker login: one trailing newline (or CRLF) is not part of it.
        password = sys.stdin.read()
        password = password.removesuffix("\n").removesuffix("\r")
        if not password:
            raise click.UsageError("--password-stdin read an empty password")
    if not username:
        if password is not None:
            raise click.UsageError("--password needs --username")
        return None
    if password is None:
        raise click.UsageError(
            "--username needs --password or --password-stdin")
    source = ("OCCYSTRAP_USERNAME" if ctx.get_parameter_source("username")
              == click.core.ParameterSource.ENVIRONMENT else "--username")
    return Credentials(username, password, source=source)


def _configure_logging(verbose: bool, quiet: bool):
    """One handler on our logger, writing to the current stderr.

    Returns what undoes it, so that running the command in-process (as
    tests and other programs do) leaves logging as it found it.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s: %(message)s"))
    before = LOG.level, LOG.propagate
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG if verbose
                 else logging.ERROR if quiet else logging.WARNING)
    LOG.propagate = False

    def restore() -> None:
        LOG.removeHandler(handler)
        LOG.setLevel(before[0])
        LOG.propagate = before[1]
    return restore


class _PrintableFormatter(logging.Formatter):
    """Log lines quote names from input too: no control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record), keep_newlines=True)


def _client(settings: Settings, reference: ImageReference):
    from occystrap.registry import RegistryClient
    credentials: Credentials | CredentialSource | None = settings.credentials
    if credentials is None:
        # Read only if the registry asks: public pulls never run helpers.
        credentials = functools.partial(
            find_credentials, reference.registry.host, reference.repository)
    return RegistryClient(reference.registry, settings.transport,
                          credentials)


def _run(settings: Settings, source, writer: ImageWriter,
         destination: Path) -> pipeline.Summary:
    """Run the pipeline with progress drawn and a summary said, as asked."""
    with _progress(settings) as report:
        summary = pipeline.run(source, writer, report=report,
                               parallel=settings.parallel)
    if not settings.quiet:
        _say(_summary(summary, destination), err=True)
    return summary


def _summary(summary: pipeline.Summary, destination: Path) -> str:
    image = summary.image
    name = image.repo_tag or image.source or f"{image.repository}:{image.tag}"
    digest = f"{image.manifest_digest}, " if image.manifest_digest else ""
    sizes = [layer.size for layer in image.layers
             if layer.size is not None]
    skipped = (f", {summary.layers_skipped} already present"
               if summary.layers_skipped else "")
    total = (f" of {human_size(sum(sizes))}"
             if len(sizes) == len(image.layers) else "")
    count = len(image.layers)
    return (f"Saved {name} ({digest}{image.platform}, {count} "
            f"{_plural(count, 'layer')}{skipped}; {human_size(summary.bytes_transferred)}"
            f"{total} read in {summary.seconds:.1f}s) to {destination}")


@cli.command("fetch-to-tarfile")
@click.argument("registry")
@click.argument("image")
@click.argument("tag")
@click.argument("tarfile", type=click.Path(dir_okay=False, path_type=Path))
@pass_settings
def fetch_to_tarfile(settings: Settings, registry, image, tag, tarfile):
    """Download an image into a tarball that `docker load` accepts.

    TAG may be a tag, a digest (sha256:...), or both (1.36@sha256:...:
    named by the tag, verified by the digest). An image fetched by digest
    alone loads in docker untagged; containerd names it REPO@sha256:....
    TARFILE '-' (or a FIFO, or /dev/stdout) streams the tarball once it
    is complete, from a temporary file in TMPDIR.

    \b
    Example:
      occystrap fetch-to-tarfile registry-1.docker.io library/busybox \\
          latest busybox.tar
    """
    from occystrap.outputs.tarball import TarballWriter
    reference = _reference(registry, image, tag)
    _fetch(settings, reference, TarballWriter(tarfile), tarfile)


@cli.command("fetch-to-extracted")
@click.option("--use-unique-names", is_flag=True,
              help="Share DIR between many images: unique manifest names, "
                   "layers stored once, and a catalog.json.")
@click.option("--expand", is_flag=True,
              help="Also unpack each layer beside its layer.tar, and build "
                   "the image's final filesystem (layers applied, whiteouts "
                   "processed) in a directory named like its manifest.")
@click.argument("registry")
@click.argument("image")
@click.argument("tag")
@click.argument("directory", metavar="DIR",
                type=click.Path(file_okay=False, path_type=Path))
@pass_settings
def fetch_to_extracted(settings: Settings, use_unique_names, expand,
                       registry, image, tag, directory):
    """Download an image's elements into a directory.

    DIR then holds what the tarball would (manifest.json, the config, one
    directory per layer); `cd DIR; tar -cf ../image.tar *` makes a tarball
    `docker load` accepts. With --use-unique-names, many images share DIR
    and layers already there are not downloaded again. A tar of a shared
    (--use-unique-names) or --expand directory does not load: make the
    tarball with `occystrap recreate-image DIR IMAGE TAG image.tar`.
    TAG is as for fetch-to-tarfile.

    \b
    Examples:
      occystrap fetch-to-extracted registry-1.docker.io library/centos 7 \\
          centos7
      occystrap fetch-to-extracted --use-unique-names registry-1.docker.io \\
          homeassistant/home-assistant stable merged_images
      occystrap fetch-to-extracted --expand quay.io \\
          ukhomeofficedigital/centos-base latest ukhomeoffice-centos
    """
    from occystrap.outputs.directory import DirectoryWriter
    reference = _reference(registry, image, tag)
    _fetch(settings, reference,
           DirectoryWriter(directory, shared=use_unique_names, expand=expand),
           directory)
    if expand and not settings.quiet:
        # The expanded trees hold symlinks that containerd's importer
        # refuses in a tar; the help says the same for shared directories.
        click.echo(
            f"A tar of {directory} will not load (expanded directory); make "
            f"a loadable tarball with: occystrap recreate-image {directory} "
            f"{image} {tag} IMAGE.tar", err=True)


@cli.command("recreate-image")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.argument("image")
@click.argument("tag")
@click.argument("tarfile", type=click.Path(dir_okay=False, path_type=Path))
@pass_settings
def recreate_image(settings: Settings, directory, image, tag, tarfile):
    """Rebuild one image's loadable tarball from a directory, offline.

    DIR is what fetch-to-extracted wrote (alone or shared), or a bundle
    from fetch-to-bundle (the directory, or a tar of it).

    Every layer is checked against the image config as it is copied.
    TARFILE '-' writes to standard output.

    \b
    Example:
      occystrap recreate-image merged_images homeassistant/home-assistant \\
          latest ha-latest.tar
    """
    from occystrap.inputs.directory import DirectoryInput
    from occystrap.outputs.tarball import TarballWriter
    _check_outside(tarfile, directory)
    if not directory.is_file() and not (directory / "index.json").exists():
        _run(settings, DirectoryInput(directory, image, tag),
             TarballWriter(tarfile), tarfile)
        return
    from occystrap.inputs.offline_image import SourceInput
    from occystrap.sources import open_source
    with open_source(directory) as held:
        _run(settings, SourceInput.find(held, image, tag, settings.platform),
             TarballWriter(tarfile), tarfile)


def _check_outside(output: Path, source: Path) -> None:
    """An output inside its source would overwrite the files being read."""
    try:
        if str(output) == "-" or (output.exists() and not output.is_file()):
            return  # streamed to, never replaced
        where, inside = output.resolve(), source.resolve()
    except (OSError, RuntimeError):
        return  # then opening either one fails, and says why
    if where == inside or inside in where.parents:
        raise click.UsageError(
            f"TARFILE {output} is inside the source {source}; writing it "
            "would overwrite what is being read: give a path outside it")


@cli.command("fetch-to-bundle")
@click.option("--images-from", "lists", multiple=True,
              type=click.File("r", encoding="utf-8"), metavar="FILE",
              help="Read references from FILE, one per line ('-' for "
                   "standard input); blank lines and # comments are "
                   "skipped. May be repeated.")
@click.option("--keep-going", is_flag=True,
              help="Fetch every image that can be fetched; report each "
                   "failure, then exit 1.")
@click.option("--all-platforms", is_flag=True,
              help="Keep a multi-platform image's whole index, with every "
                   "platform's manifest and blobs.")
@click.argument("references", nargs=-1, metavar="[REFERENCE]...")
@click.argument("directory", metavar="DIR",
                type=click.Path(file_okay=False, path_type=Path))
@pass_settings
def fetch_to_bundle(settings: Settings, lists, keep_going, all_platforms,
                    references, directory):
    """Fetch images, byte for byte, into one bundle directory.

    REFERENCE is an image as docker names it: busybox:1.36,
    quay.io/org/app:1.0, 127.0.0.1:5000/team/app:2, app@sha256:...
    (pinned) or app:1.0@sha256:... (named by the tag, pinned by the
    digest). DIR is an OCI image layout holding every manifest, config
    and layer exactly as the registry served it, plus a docker
    manifest.json, so one tar of it loads in docker, podman and
    containerd. Running again adds images, skips those already complete,
    and resumes a cut download from the byte it reached.

    \b
    Example:
      occystrap fetch-to-bundle --images-from images.txt transfer
      tar -cf transfer.tar -C transfer .
      docker load -i transfer.tar        # on the far side
    """
    from occystrap import bundler
    from occystrap.outputs.bundle import BundleWriter
    from occystrap.reference import parse_list
    try:
        wanted = parse_list(list(references), "the command line")
        for handle in lists:
            wanted += parse_list(handle.readlines(), handle.name)
    except InvalidReference as e:
        raise click.UsageError(str(e)) from None
    if not wanted:
        raise click.UsageError("give at least one REFERENCE or "
                               "--images-from FILE")
    writer = BundleWriter(directory, settings.platform, all_platforms)
    clients: dict = {}

    def client_for(reference: ImageReference):
        key = reference.registry
        if key not in clients:
            clients[key] = _client(settings, reference)
        return clients[key]

    try:
        with _progress(settings) as report:
            outcomes = bundler.fetch_all(
                wanted, writer, client_for,
                bundler.Request(settings.platform, settings.platform_required,
                                all_platforms, keep_going, settings.parallel),
                report=report)
    finally:
        for client in clients.values():
            client.close()
    failed = [o for o in outcomes if o.error is not None]
    if not settings.quiet:
        for outcome in outcomes:
            _say(_bundle_line(outcome), err=True)
        _say(_bundle_total(outcomes, writer, directory), err=True)
    for outcome in failed:
        click.echo(_scrub(f"Error: {outcome.reference}: {outcome.error}"),
                   err=True)
    if failed:
        raise click.exceptions.Exit(1)


def _bundle_line(outcome) -> str:
    name = outcome.reference
    if outcome.error is not None:
        return f"Failed  {name}"
    if outcome.skipped:
        return f"Present {name} ({outcome.digest}), unchanged"
    platforms = ", ".join(sorted({str(p) for p in outcome.platforms}))
    untagged = ("; untagged for docker load (name it REPO:TAG@sha256:…)"
                if outcome.reference.tag is None else "")
    return f"Saved   {name} ({outcome.digest}, {platforms}){untagged}"


def _bundle_total(outcomes, writer, directory: Path) -> str:
    fetched = sum(1 for o in outcomes if o.error is None and not o.skipped)
    skipped = sum(1 for o in outcomes if o.skipped)
    read = sum(o.bytes_read for o in outcomes)
    present = sum(o.layers_present for o in outcomes)
    return (f"{fetched} {_plural(fetched, 'image')} saved, {skipped} "
            f"already present, {writer.new_blobs} new "
            f"{_plural(writer.new_blobs, 'blob')} "
            f"({human_size(read)} read), {present} "
            f"{_plural(present, 'layer')} already present; bundle: {directory}")


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


def _fetch(settings: Settings, reference: ImageReference,
           writer: ImageWriter, destination: Path) -> None:
    client = _client(settings, reference)
    from occystrap.inputs.registry import RegistryInput
    try:
        source = RegistryInput(client, reference, settings.platform,
                               settings.platform_required)
        summary = _run(settings, source, writer, destination)
    finally:
        client.close()
    image = summary.image
    if image.repo_tag is None and not settings.quiet:
        click.echo(
            "Note: fetched by digest alone, so docker load leaves it "
            "untagged; name it with `docker tag "
            f"{image.config_digest.hex[:12]} {reference.short_name}:TAG`, "
            f"or fetch it as TAG@{reference.digest} to carry a tag", err=True)


@cli.command("verify")
@click.option("--expect", type=click.Path(exists=True, dir_okay=False,
                                          path_type=Path),
              metavar="BOM.json",
              help="Also check SOURCE holds exactly the images and digests "
                   "of this BOM (from occystrap inspect --json).")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@pass_settings
def verify(settings: Settings, expect, source):
    """Check every file of SOURCE offline; name each one that is wrong.

    SOURCE is a tarball (fetch-to-tarfile, recreate-image, docker save), an
    extracted directory (single or shared) or a bundle (a directory or a
    tar of one). Every blob is hashed to its digest and every layer's
    content to the config's diff_id; manifests, configs, catalog.json,
    manifest.json and index.json must agree. Nothing is written. Exit 0
    when all is well, 1 with one line per problem otherwise.

    \b
    Example:
      occystrap inspect --json transfer > transfer.bom.json
      occystrap verify --expect transfer.bom.json transfer
    """
    from occystrap import bom, sources
    from occystrap import verify as checks
    expected = bom.load(expect) if expect else None
    display = _VerifyProgress(sys.stderr) if settings.progress else None
    with sources.open_source(source) as opened:
        try:
            report = checks.verify(opened, settings.parallel,
                                   display or checks.ignore)
        finally:
            if display:
                display.close()
        problems = list(report.problems)
        if expected is not None:
            problems += bom.compare(expected, report.images, str(expect),
                                    str(source))
    if not settings.quiet:
        for warning in report.warnings:
            _say(f"warning: {warning}")
    for problem in problems:
        _say(str(problem))
    if problems:
        _say(f"{len(problems)} {_plural(len(problems), 'problem')} "
             f"in {source}")
        raise click.exceptions.Exit(1)
    if not settings.quiet:
        matched = f", as {expect} lists" if expect else ""
        _say(
            f"{source}: {len(report.images)} "
            f"{_plural(len(report.images), 'image')}{matched}, "
            f"{report.files_checked} "
            f"{_plural(report.files_checked, 'layer')} "
            f"({human_size(report.bytes_checked)}) verified; no problems")


class _VerifyProgress:
    """One line on stderr: layers and bytes checked so far."""

    def __init__(self, stream) -> None:
        import threading
        import time
        self._stream, self._clock = stream, time.monotonic
        self._lock = threading.Lock()
        self._files = self._total = self._checked = self._done = 0
        self._drawn = 0.0

    def __call__(self, event) -> None:
        from occystrap import verify as checks
        with self._lock:
            if isinstance(event, checks.Planned):
                self._files, self._total = event.files, event.total
            elif isinstance(event, checks.BytesChecked):
                self._checked += event.count
            else:
                self._done += 1
            if self._clock() - self._drawn >= 0.1:
                self._draw()

    def _draw(self) -> None:
        self._drawn = self._clock()
        self._stream.write(
            f"\r\x1b[2Kverifying: {self._done}/{self._files} layers  "
            f"{human_size(self._checked)} / {human_size(self._total)}")
        self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._draw()
            self._stream.write("\n")


@cli.command("inspect")
@click.option("--json", "as_json", is_flag=True,
              help="Print the bill of materials as JSON (schema 1, see the "
                   "README), for verify --expect on the far side.")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@pass_settings
def inspect(settings: Settings, as_json, source):
    """List the images in SOURCE: names, platform, digests, layers.

    Reads only the metadata (index, manifests, configs), so it is quick;
    use verify to check every byte.

    \b
    Example:
      occystrap inspect transfer.tar
      occystrap inspect --json transfer > transfer.bom.json
    """
    import json

    from occystrap import bom, sources
    with sources.open_source(source) as opened:
        scan = opened.scan()
        doc = bom.describe(opened, scan.images)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(_inspect_table(doc))
    if scan.findings:
        for finding in scan.findings:
            _say(f"Error: {finding}", err=True)
        _say(f"{source} is damaged; occystrap verify {source} checks "
             "it in full", err=True)
        raise click.exceptions.Exit(1)


def _inspect_table(doc: dict) -> str:
    source = doc["source"]
    lines = [f"{source['path']}: {source['format']} {source['container']}, "
             f"{len(doc['images'])} {_plural(len(doc['images']), 'image')}"]
    for image in doc["images"]:
        size = human_size(image["size"]) if image["size"] is not None \
            else "size unknown"
        lines += ["", ", ".join(image["names"]) or "(untagged)"]
        for key in ("platform", "manifest_digest", "index_digest",
                    "config_digest", "created"):
            if image[key] is not None:
                lines.append(f"  {key.replace('_', ' '):<16}{image[key]}")
        lines.append(f"  {'layers':<16}{len(image['layers'])}, {size}")
        for layer in image["layers"]:
            size = human_size(layer["size"]) if layer["size"] is not None \
                else "?"
            diff_id = f"  diff_id {layer['diff_id']}" \
                if layer["diff_id"] not in (None, layer["digest"]) else ""
            lines.append(f"    {layer['digest'] or '?'}  {size:>10}{diff_id}")
    return "\n".join(printable(line) for line in lines)


class _Size(click.ParamType):
    """A byte count: 4194304, 512k, 8M or 1G (binary units)."""

    name = "SIZE"
    _UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*",
                             str(value).lower())
        if not match:
            self.fail(f"{value!r} is not a size; use bytes or a number "
                      "with k, M or G, e.g. 4M", param, ctx)
        return int(match.group(1)) * self._UNITS[match.group(2)]


@cli.command("push")
@click.option("--prefix", metavar="PATH",
              help="Put every image under this repository path, e.g. "
                   "mirror: REGISTRY/mirror/library/busybox:latest.")
@click.option("--image", "images", multiple=True, metavar="REPO:TAG",
              help="Push only this image of SOURCE (as it is named there); "
                   "may be repeated.")
@click.option("--chunk-size", type=_Size(), default="16M",
              show_default=True,
              help="Upload larger blobs in chunks of this size; smaller "
                   "when a proxy refuses large requests (HTTP 413).")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("registry")
@pass_settings
def push(settings: Settings, prefix, images, chunk_size, source, registry):
    """Push every image of SOURCE into REGISTRY (HOST[:PORT]).

    SOURCE is a bundle (fetch-to-bundle; a directory or a tar of one), a
    tarball (fetch-to-tarfile, recreate-image, docker save) or a
    fetch-to-extracted directory, single or shared. Each image keeps its
    repository path and tag: 127.0.0.1:5555/shared/app:stable goes to
    REGISTRY/shared/app:stable, busybox:latest to
    REGISTRY/library/busybox:latest. From a bundle every manifest, index
    and blob goes up byte for byte, so every digest stays the same; from a
    tarball or a directory, layers are compressed on the way and a new
    manifest is written (the config, and so the image ID, is unchanged).
    Blobs the registry has are skipped, and blobs already pushed to
    another repository are mounted, not sent again.

    \b
    Example:
      occystrap push transfer registry.internal:5000
      occystrap push --prefix mirror --image busybox:1.36 transfer.tar \\
          registry.internal:5000
    """
    from occystrap import pusher, sources
    from occystrap.blobcache import CompressedBlobs, default_root
    from occystrap.image import Flow
    from occystrap.outputs.push import PushWriter
    from occystrap.reference import Registry
    from occystrap.transport import Transport
    from occystrap.upload import MIN_CHUNK_SIZE, BlobUploader
    if chunk_size < MIN_CHUNK_SIZE:
        raise click.BadParameter(
            f"at least {human_size(MIN_CHUNK_SIZE)}", param_hint="--chunk-size")
    target = Registry.parse(registry)
    credentials: Credentials | CredentialSource | None = settings.credentials
    if credentials is None:
        credentials = functools.partial(find_credentials, target.host)
    with sources.open_source(source) as held, \
            Transport(target, settings.transport, credentials) as transport:
        targets = pusher.plan(held, prefix, tuple(images), settings.platform)
        keeps = all(i.manifest is not None for t in targets for i in t.images)
        writer = PushWriter(BlobUploader(transport, chunk_size),
                            Flow.BLOB if keeps else Flow.LAYER,
                            CompressedBlobs(default_root()))
        with _progress(settings) as report:
            outcomes = pusher.push(held, writer, targets, report=report,
                                   parallel=settings.parallel)
    if not settings.quiet:
        for outcome in outcomes:
            click.echo(_push_line(outcome, target.host), err=True)


def _push_line(outcome, host: str) -> str:
    target = outcome.target
    where = f"{host}/{target.repository}"
    name = (f"{where}:{target.tag}" if target.tag
            else f"{where}@{outcome.digest}")
    what = "index" if target.index else "manifest"
    platforms = ", ".join(sorted({str(p) for p in outcome.platforms}))
    sent = (f" ({human_size(outcome.bytes_uploaded)})"
            if outcome.uploaded else "")
    blobs = [f"{outcome.uploaded} {_plural(outcome.uploaded, 'blob')} "
             f"uploaded{sent}"]
    if outcome.mounted:
        blobs.append(f"{outcome.mounted} mounted")
    if outcome.present:
        blobs.append(f"{outcome.present} already there")
    line = (f"Pushed {target.label} to {name} ({what} {outcome.digest}, "
            f"{platforms}; {', '.join(blobs)}; {outcome.seconds:.1f}s)")
    if target.tag is None:
        line += "; by digest only, as the image has no tag"
    if outcome.new_manifest:
        line += ("; a new manifest with the layers gzip-compressed, not "
                 "the digest the image had where it came from (its config "
                 "and image ID are unchanged)")
    if target.note:
        line += f"; {target.note}"
    return line


def main() -> None:
    cli(prog_name="occystrap")
