"""Decode every image of a prepared dataset, quarantine the bad ones, optionally re-encode with ffmpeg.

A check decodes each image once in-process with Pillow, in a pool of worker threads (Pillow's decoders release
the GIL). What Pillow cannot decode (a format it lacks, or a damaged file) goes to ffmpeg (`ffmpeg -err_detect
explode -i IMAGE -f null -`), which has the last word: undecodable, empty or missing images go to the dataset's
`quarantine.csv` (split, path, reason) and the split CSVs are rewritten without them. So do images Pillow refuses
as decompression bombs (over twice `Image.MAX_IMAGE_PIXELS`): the torch loader, which decodes with Pillow, would
stop at them. With re-encoding, every
good image is written by ffmpeg as a JPEG with its short side at 256 pixels under a new image root and
`dataset.yaml` points there, so training decodes small files.

Every result is appended to a progress file in the dataset folder as soon as it is known, so a killed
run started again skips the images already done. Delete the progress file (or pass `restart=True`) to
check everything again.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ffmpeg
import imageio_ffmpeg
from PIL import Image

from curvenet_dist.data.sample_table import DataError, PreparedDataset, SampleTable

QUARANTINE_FILE = "quarantine.csv"
CHECK_PROGRESS_FILE = "check_progress.csv"
REENCODE_PROGRESS_FILE = "reencode_progress.csv"
REENCODE_SHORT_SIDE = 256
REENCODE_QUALITY = 2
"""ffmpeg's -q:v for JPEG: 2 is near-lossless (the scale runs 2-31, lower is better)."""


@dataclass(frozen=True)
class QuarantinedImage:
    """A sample left out of its split, and why."""

    split: str
    path: str
    reason: str


def read_quarantine(folder: Path) -> list[QuarantinedImage]:
    quarantine_file = Path(folder) / QUARANTINE_FILE
    if not quarantine_file.is_file():
        return []
    with open(quarantine_file, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["split", "path", "reason"]:
        raise DataError(f"{quarantine_file}:1: expected the header 'split,path,reason'")
    return [QuarantinedImage(*row) for row in rows[1:]]


def write_quarantine(folder: Path, entries: Iterable[QuarantinedImage]) -> None:
    with open(Path(folder) / QUARANTINE_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["split", "path", "reason"])
        writer.writerows((entry.split, entry.path, entry.reason) for entry in entries)


def clear_progress(folder: Path) -> None:
    """Forget earlier checks of this folder (its split tables were just written afresh)."""
    for name in (CHECK_PROGRESS_FILE, REENCODE_PROGRESS_FILE):
        (Path(folder) / name).unlink(missing_ok=True)


def find_ffmpeg() -> str:
    """The system ffmpeg if there is one, else the static binary that ships with imageio-ffmpeg."""
    return shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()


class FfmpegFailure(RuntimeError):
    """ffmpeg stopped without saying why (killed, out of memory): the image may be fine, so it is not quarantined."""


def _error_messages(stderr: bytes) -> list[str]:
    """ffmpeg's error lines without their '[decoder @ 0x...]' prefixes, deduplicated."""
    messages: list[str] = []
    for line in stderr.decode(errors="replace").splitlines():
        message = re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip()
        if message and message not in messages:
            messages.append(message)
    return messages


def _input(image: Path) -> ffmpeg.nodes.FilterableStream:
    # The options go before -i because ffmpeg may ignore options trailing the output. -xerror with
    # -err_detect explode: a truncated JPEG otherwise decodes with a gray bottom and exit code 0.
    # One thread each: the parallelism comes from running many ffmpeg processes.
    return ffmpeg.input(str(image), nostdin=None, v="error", xerror=None, threads=1, err_detect="explode")


def _run_ffmpeg(stream: ffmpeg.nodes.OutputStream, ffmpeg_exe: str, image: Path, attempts: int = 2) -> str | None:
    """None if ffmpeg succeeds, else the reason the image is bad (ffmpeg's first two error messages)."""
    for _ in range(attempts):
        try:
            ffmpeg.run(stream, cmd=ffmpeg_exe, capture_stdout=True, capture_stderr=True)
        except ffmpeg.Error as error:
            # With -v error, a bad image always makes ffmpeg print why; silence means it was stopped from outside.
            if messages := _error_messages(error.stderr):
                return "undecodable: " + "; ".join(messages[:2])[:200]
        else:
            return None
    raise FfmpegFailure(f"{image}: ffmpeg failed {attempts} times without a message (killed? out of memory?)")


def _unreadable_reason(image: Path) -> str | None:
    if not image.is_file():
        return "missing: no such file"
    if image.stat().st_size == 0:
        return "empty file"
    return None


def pillow_failure(image: Path, header_only: bool = False) -> Exception | None:
    """Pillow's error opening the image (reading its header only) or decoding every pixel (a truncated file fails:
    Pillow's default), or None."""
    try:
        with Image.open(image) as opened:
            if not header_only:
                opened.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return error
    return None


def _too_many_pixels(failure: Exception | None) -> str | None:
    # ffmpeg would decode such an image, but the torch loader decodes with Pillow, which refuses it: quarantined.
    if isinstance(failure, Image.DecompressionBombError):
        return f"too many pixels: {failure}"
    return None


def decode_check(ffmpeg_exe: str, image: Path) -> str | None:
    """None if the image decodes without error (in-process with Pillow, else with ffmpeg), else why it is bad."""
    reason = _unreadable_reason(image)
    if reason is not None:
        return reason
    failure = pillow_failure(image)
    if failure is None:
        return None
    return _too_many_pixels(failure) or _run_ffmpeg(_input(image).output("-", format="null"), ffmpeg_exe, image)


def reencode(ffmpeg_exe: str, image: Path, target: Path) -> str | None:
    """Decode `image` and write it to `target` as a JPEG with its short side at 256; None, or why not."""
    reason = _unreadable_reason(image) or _too_many_pixels(pillow_failure(image, header_only=True))
    if reason is not None:
        return reason
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under another name first: a killed run never leaves a half file at `target`.
    partial = target.with_name(target.name + ".part")
    short = REENCODE_SHORT_SIDE
    stream = (
        _input(image)
        .filter("scale", f"if(lte(iw,ih),{short},-1)", f"if(lte(iw,ih),-1,{short})")
        .output(str(partial), format="mjpeg", vframes=1, pix_fmt="yuvj420p", **{"q:v": REENCODE_QUALITY})
        .overwrite_output()
    )
    reason = _run_ffmpeg(stream, ffmpeg_exe, image)
    if reason is not None:
        partial.unlink(missing_ok=True)
        return reason
    os.replace(partial, target)
    return None


class ProgressBar:
    """A one-line text progress bar, redrawn in place on a terminal and as plain lines elsewhere."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.is_terminal = self.stream.isatty()
        self.interval = 0.5 if self.is_terminal else 10.0
        self.start = time.monotonic()
        self.last_draw = self.start

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last_draw >= self.interval:
            self._draw(now)

    def close(self) -> None:
        self._draw(time.monotonic())
        if self.is_terminal:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        self.last_draw = now
        fraction = self.done / self.total if self.total else 1.0
        filled = int(30 * fraction)
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = (
            f"{self.label}: {self.done}/{self.total} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:3.0f}% "
            f"{rate:.1f} images/s, eta {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        self.stream.write(f"\r{line}" if self.is_terminal else f"{line}\n")
        self.stream.flush()


def _run_bounded(work: Callable[[str], str | None], items: list[str], workers: int) -> Iterator[tuple[str, str | None]]:
    """(item, result) pairs as they finish; at most a few tasks per worker are queued at once."""
    pending: dict[Future, str] = {}
    remaining = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while True:
            for item in remaining:
                pending[pool.submit(work, item)] = item
                if len(pending) >= 4 * workers:
                    break
            if not pending:
                return
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield pending.pop(future), future.result()


class _ProgressLog:
    """The progress file: a first row naming the image roots, then one `path,reason` row per image done.

    `reason` is empty for a good image. Only rows ending in a newline count, so a row cut short by a kill is
    done again.
    """

    def __init__(self, path: Path, roots: list[str], restart: bool) -> None:
        self.path = path
        self.results: dict[str, str] = {}
        if path.is_file() and not restart:
            text = path.read_text()
            complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            rows = list(csv.reader(complete.splitlines()))
            if rows and rows[0] == ["#roots", *roots]:
                self.results = {row[0]: row[1] for row in rows[1:] if len(row) == 2}
            else:
                print(f"{path}: written for other image roots; checking every image again", file=sys.stderr)
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")
        # Rewritten rather than appended to: appending after a row cut short would corrupt the next row.
        self.writer.writerow(["#roots", *roots])
        self.writer.writerows(self.results.items())
        self.file.flush()

    def record(self, path: str, reason: str | None) -> None:
        self.results[path] = reason or ""
        self.writer.writerow([path, reason or ""])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class CheckResult:
    """The rewritten dataset and what the check did."""

    dataset: PreparedDataset
    checked: int
    """Images decoded by this run."""
    resumed: int
    """Images skipped because an earlier run had done them."""
    quarantined: list[QuarantinedImage]
    """Everything in the dataset's quarantine list, from this run and earlier ones."""


def _reencoded_path(path: str) -> str:
    return str(Path(path).with_suffix(".jpg"))


def check_dataset(
    folder: Path,
    workers: int = os.cpu_count() or 1,
    reencode_root: Path | None = None,
    restart: bool = False,
) -> CheckResult:
    """Decode-check (and with `reencode_root`, re-encode) every image of the prepared dataset in `folder`."""
    folder = Path(folder)
    dataset = PreparedDataset.read(folder)
    image_root = next(iter(dataset.splits.values())).image_root.resolve()
    paths = sorted({path for table in dataset.splits.values() for path in table.paths})
    ffmpeg_exe = find_ffmpeg()

    if reencode_root is None:
        roots = [str(image_root)]
        progress_file = folder / CHECK_PROGRESS_FILE

        def work(path: str) -> str | None:
            return decode_check(ffmpeg_exe, image_root / path)

    else:
        reencode_root = Path(reencode_root).resolve()
        if reencode_root == image_root:
            raise DataError(f"{folder / 'dataset.yaml'}: images are already under {image_root}; re-encode elsewhere")
        targets: dict[str, str] = {}
        for path in paths:
            if _reencoded_path(path) in targets:
                raise DataError(
                    f"{folder}: {path} and {targets[_reencoded_path(path)]} would both be re-encoded "
                    f"to {_reencoded_path(path)}"
                )
            targets[_reencoded_path(path)] = path
        roots = [str(image_root), str(reencode_root)]
        progress_file = folder / REENCODE_PROGRESS_FILE

        def work(path: str) -> str | None:
            return reencode(ffmpeg_exe, image_root / path, reencode_root / _reencoded_path(path))

    log = _ProgressLog(progress_file, roots, restart)

    def already_done(path: str) -> bool:
        if path not in log.results:
            return False
        if log.results[path] or reencode_root is None:
            return True
        # A good image counts as re-encoded only while its output exists (someone may have cleared the folder).
        return (reencode_root / _reencoded_path(path)).is_file()

    to_do = [path for path in paths if not already_done(path)]
    bar = ProgressBar(len(to_do), "re-encoding images" if reencode_root else "checking images")
    try:
        for path, reason in _run_bounded(work, to_do, max(1, workers)):
            log.record(path, reason)
            bar.advance()
    finally:
        bar.close()
        log.close()

    checked = _without_bad_images(dataset, log.results, reencode_root)
    checked.write()
    quarantined = read_quarantine(folder)
    listed = {(entry.split, entry.path) for entry in quarantined}
    for split, table in dataset.splits.items():
        for path in table.paths:
            if log.results[path] and (split, path) not in listed:
                quarantined.append(QuarantinedImage(split, path, log.results[path]))
    write_quarantine(folder, quarantined)
    return CheckResult(checked, checked=len(to_do), resumed=len(paths) - len(to_do), quarantined=quarantined)


def _without_bad_images(
    dataset: PreparedDataset, reasons: dict[str, str], reencode_root: Path | None
) -> PreparedDataset:
    """The dataset without the images that have a reason to be bad, pointing at the re-encoded copies if any."""
    splits: dict[str, SampleTable] = {}
    for split, table in dataset.splits.items():
        kept = table.select([row for row, path in enumerate(table.paths) if not reasons[path]])
        if reencode_root is not None:
            kept = SampleTable(
                reencode_root,
                [_reencoded_path(path) for path in kept.paths],
                kept.labels,
                kept.true_labels,
                kept.num_classes,
                origin=kept.origin,
            )
        splits[split] = kept
    return PreparedDataset(dataset.folder, dataset.class_names, splits)
