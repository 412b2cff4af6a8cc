"""What a loader does when it meets an image it cannot read: find every unreadable image of the table, not just the
first, so one run tells the user all there is to fix."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError

from curvenet_dist.data.sample_table import DataError, SampleTable

# How many of them the error line names; `python -m data_prep check` lists (and quarantines) them all.
NAMED = 5
CHUNK = 256


class UnreadableImage(DataError):
    """A sample's image cannot be read; its loader turns it into `unreadable_images_error`. (Its one argument is
    the message: a DataLoader worker's exception is rebuilt in the main process from its message alone.)"""


def read_rgb(path) -> Image.Image:
    """The image at `path` decoded to RGB, or UnreadableImage's cause (OSError, UnidentifiedImageError, or
    Image.DecompressionBombError past Pillow's pixel limit, which `python -m data_prep check` quarantines)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _reason(path) -> str | None:
    try:
        read_rgb(path)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        return str(error) or type(error).__name__
    return None


def unreadable_images(table: SampleTable, workers: int | None = None) -> dict[int, str]:
    """Every sample of `table` whose image Pillow cannot decode, with the reason, by sample id. Decoding runs in
    threads (Pillow's decoders release the GIL), a chunk of samples per task so a million samples stay cheap."""
    def check(start: int) -> list[tuple[int, str]]:
        found = []
        for sample_id in range(start, min(start + CHUNK, len(table))):
            reason = _reason(table.image_path(sample_id))
            if reason is not None:
                found.append((sample_id, reason))
        return found

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return dict(pair for chunk in pool.map(check, range(0, len(table), CHUNK)) for pair in chunk)


def unreadable_images_error(table: SampleTable, first: DataError, known: dict[int, str] | None = None) -> DataError:
    """The error for a loader that met `first`: every unreadable image of the table, the first few named. `known`:
    samples the loader's own decoder failed on (DALI's may refuse what Pillow reads)."""
    origin = table.origin or "dataset"
    print(f"{origin}: an image cannot be read; checking all {len(table)} images to list every unreadable one",
          file=sys.stderr, flush=True)
    found = {**unreadable_images(table), **(known or {})}
    if not found:  # read fine now (a transient error, or the file was replaced meanwhile)
        return first
    named = "; ".join(f"sample {sample_id} {table.image_path(sample_id)}: {found[sample_id]}"
                      for sample_id in sorted(found)[:NAMED])
    more = f"; and {len(found) - NAMED} more" if len(found) > NAMED else ""
    return DataError(f"{origin}: {len(found)} of {len(table)} images cannot be read: {named}{more} "
                     f"(`python -m data_prep check --dataset FOLDER` lists and quarantines them all)")
