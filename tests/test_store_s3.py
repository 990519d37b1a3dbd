"""The S3 backend against a real S3 endpoint on 127.0.0.1 (moto's server), through plain boto3."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from farm.store import S3Store, load_records, open_store, save_image, image_record, write_manifest
from factories import make_task


@pytest.fixture
def bucket(s3_endpoint, request):
    name = f"farm-{request.node.name.lower().replace('_', '-')[:40]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_s3_store_roundtrip(s3_endpoint, bucket):
    store = open_store(f"s3://{bucket}/renders?endpoint_url={s3_endpoint}")
    assert isinstance(store, S3Store)
    store.write_bytes("j/images/a.png", b"A")
    store.write_bytes("j/images/b.png", b"B")
    store.write_bytes("j/other.txt", b"C")
    assert store.read_bytes("j/images/a.png") == b"A"
    assert store.exists("j/images/b.png") and not store.exists("j/images/zz.png")
    assert list(store.list_keys("j/images/")) == ["j/images/a.png", "j/images/b.png"]
    with pytest.raises(FileNotFoundError):
        store.read_bytes("j/missing")
    store.delete("j/images/a.png")
    store.delete("j/images/a.png")  # deleting twice is fine, as on a folder
    assert not store.exists("j/images/a.png")
    # the objects really are under the prefix in the bucket
    raw = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=bucket)
    assert sorted(o["Key"] for o in raw["Contents"]) == ["renders/j/images/b.png", "renders/j/other.txt"]
    assert store.describe("j/other.txt") == f"s3://{bucket}/renders/j/other.txt"


def test_s3_concurrent_writers_and_duplicates_give_one_manifest_line_per_image(s3_endpoint, bucket):
    store = open_store(f"s3://{bucket}?endpoint_url={s3_endpoint}")
    tasks = [
        make_task(job="job", index=i, prompt="p", seed=i, checkpoint="c", axes={"seed": i})
        for i in range(12)
    ]

    def finish(task):  # every task delivered twice, from 8 threads at once
        record = image_record(task, task.seed, "p\nSteps: 2, Seed: 1, Size: 64x64", 0.1, "w")
        save_image(open_store(store.url), task, task.seed, b"png", record)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(finish, tasks + tasks))
    assert write_manifest(store, "job") == 12
    lines = store.read_text("job/manifest.jsonl").splitlines()
    assert sorted(json.loads(line)["seed"] for line in lines) == list(range(12))
    assert len(load_records(store, "job")) == 12
