"""Every key of a job in a store, spelled once (like rq's keys.py). Nothing else in farm/ or
worker/ writes a store path by hand.

Relative to the store root, the same on a folder and on S3:

    {job}/job.yaml                  the spec as submitted
    {job}/job.json                  the job record (farm/jobs.py)
    {job}/images/{stem}.png         one PNG per image, infotext in its `parameters` chunk
    {job}/records/{stem}.json       one record per finished image; its existence means "done"
    {job}/manifest.jsonl            one line per image, built from the records
    {job}/sheets/{name}.png         contact sheets
    {job}/review/marks/{stem}.json  a reviewer's star or reject of one image
    {job}/review/{file}             the static review page (`farm review --export`)
    {job}/inputs/{sha256}.{ext}     a job's input images (img2img, inpaint masks), by content (farm/inputs.py)
    models/sha256/{sha256}          the model depot (farm/depot.py): a model file under its sha256
    models/sha256/{sha256}.json     its record: name, kind, family, size, A1111 hash, suffix
    models/names/{kind}/{name}.json the sha256 last pushed under that name (LoRAs are found by name)

Stores written by earlier versions use exactly these keys: changing one breaks `farm resume`.
"""

from __future__ import annotations

# Names inside a job's folder. A record's "image" holds the image's path relative to the job.
JOB_SPEC = "job.yaml"
JOB_RECORD = "job.json"
IMAGES = "images"
RECORDS = "records"
MANIFEST = "manifest.jsonl"
SHEETS = "sheets"
REVIEW = "review"
MARKS = f"{REVIEW}/marks"
INPUTS = "inputs"
MODELS = "models"  # at the store root, beside the jobs


def job_spec_key(job: str) -> str:
    return f"{job}/{JOB_SPEC}"


def job_record_key(job: str) -> str:
    return f"{job}/{JOB_RECORD}"


def image_path(stem: str) -> str:
    """The image's path inside its job folder, as its record's "image" holds it."""
    return f"{IMAGES}/{stem}.png"


def image_key(job: str, stem: str) -> str:
    return f"{job}/{image_path(stem)}"


def job_file_key(job: str, path: str) -> str:
    """The key of a path relative to the job folder (a record's "image", a sheet's cells)."""
    return f"{job}/{path}"


def image_stem(path: str) -> str:
    """images/1000-abc.png -> 1000-abc (a stem may hold dots: 7.5 in `[seed]-[cfg]`)."""
    return path.rsplit("/", 1)[-1].removesuffix(".png")


def records_prefix(job: str) -> str:
    return f"{job}/{RECORDS}/"


def record_key(job: str, stem: str) -> str:
    return f"{records_prefix(job)}{stem}.json"


def is_record_key(key: str) -> bool:
    return key.endswith(".json")


def manifest_key(job: str) -> str:
    return f"{job}/{MANIFEST}"


def sheets_prefix(job: str) -> str:
    return f"{job}/{SHEETS}/"


def sheet_key(job: str, name: str) -> str:
    return f"{sheets_prefix(job)}{name}.png"


def is_sheet_key(key: str) -> bool:
    return key.endswith(".png")


def marks_prefix(job: str) -> str:
    return f"{job}/{MARKS}/"


def mark_key(job: str, stem: str) -> str:
    return f"{marks_prefix(job)}{stem}.json"


def mark_stem(job: str, key: str) -> str:
    """The image stem a mark key is about."""
    return key.removeprefix(marks_prefix(job)).removesuffix(".json")


def review_file_key(job: str, name: str) -> str:
    """A file of the static review page (index.html, data.js, stars.yaml ...)."""
    return f"{job}/{REVIEW}/{name}"


def input_key(job: str, name: str) -> str:
    """An input image of the job (farm/inputs.py: name is "<sha256>.<ext>" of its bytes)."""
    return f"{job}/{INPUTS}/{name}"


def model_key(name: str) -> str:
    """A key of the model depot (farm/depot.py), which spells its own keys with the three below."""
    return f"{MODELS}/{name}"


def model_object_key(sha256: str) -> str:
    return model_key(f"sha256/{sha256}")


def model_record_key(sha256: str) -> str:
    return model_key(f"sha256/{sha256}.json")


def model_records_prefix() -> str:
    return model_key("sha256/")


def model_name_key(kind: str, name: str) -> str:
    return model_key(f"names/{kind}/{name}.json")


def model_names_prefix(kind: str) -> str:
    return model_key(f"names/{kind}/")


def job_of(key: str) -> tuple[str, str]:
    """(job, path inside the job folder) of a key."""
    job, _, path = key.partition("/")
    return job, path


def is_job_record_path(path: str) -> bool:
    return path == JOB_RECORD


def is_record_path(path: str) -> bool:
    """Whether a path inside a job folder is one of its image records."""
    return path.startswith(f"{RECORDS}/") and is_record_key(path)
