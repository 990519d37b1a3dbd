"""The S3 store: AWS S3 and every S3-compatible service (MinIO, R2, B2 ...)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, urlparse

from farm.store.base import Store, check_key

# A multipart upload's parts: 64 MiB keeps a 7 GB checkpoint at ~110 parts (S3 allows 10,000) and
# a resumed push loses at most one part per thread; 4 threads fill a gigabit link without holding
# more than 256 MiB in memory.
PART_BYTES = 64 << 20
THREADS = 4
COMPLETE_TIMEOUT = 1800


class S3Store(Store):
    """An S3-compatible bucket: AWS, MinIO, R2, B2 ... `s3://bucket/prefix`, with optional
    `?endpoint_url=http://host:9000&region=eu-west-1` for non-AWS services. Credentials come from
    boto3's usual places (AWS_* env vars, ~/.aws profiles, instance roles); AWS_ENDPOINT_URL works too.
    A PUT replaces an object whole, so every write is atomic."""

    def __init__(self, url: str):
        import boto3  # here, so a local-folder farm never pays for importing boto3
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"{url}: expected s3://BUCKET/PREFIX")
        self._url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        query = parse_qs(parsed.query)
        unknown = set(query) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"{url}: unknown option(s) {', '.join(sorted(unknown))}; known: endpoint_url, region")
        # botocore retries throttling and connection errors with exponential backoff.
        config = Config(retries={"max_attempts": 8, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        where = {"endpoint_url": query.get("endpoint_url", [None])[0], "region_name": query.get("region", [None])[0]}
        self.client = boto3.client("s3", **where, config=config)
        self._slow = (where, config.merge(Config(read_timeout=COMPLETE_TIMEOUT)))

    @property
    def url(self) -> str:
        return self._url

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def write_file(self, key: str, path, progress: Callable[[int], None] = lambda n: None) -> None:
        """A large file as a multipart upload of PART_BYTES parts, THREADS at a time. Resumable: an
        unfinished upload of this key (a push that was stopped) is continued, its parts already
        there (same size and MD5) are not sent again. Completing it makes the object appear whole."""
        size = Path(path).stat().st_size
        if size <= PART_BYTES:
            with open(path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f)
            progress(size)
            return
        full = self._key(key)
        upload, done = self._unfinished_upload(full)
        if upload is None:
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]

        def send(number: int) -> dict:
            offset = (number - 1) * PART_BYTES
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(PART_BYTES)
            etag = f'"{hashlib.md5(data).hexdigest()}"'
            if done.get(number) != (len(data), etag):
                etag = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload, PartNumber=number,
                                               Body=data)["ETag"]
            progress(len(data))
            return {"PartNumber": number, "ETag": etag}

        with ThreadPoolExecutor(THREADS) as pool:
            parts = list(pool.map(send, range(1, -(-size // PART_BYTES) + 1)))
        import boto3

        # Completing a multipart upload of many GB makes the server assemble it (minutes on MinIO on
        # a NAS): that one call gets a long read timeout instead of retries that find it gone.
        completer = boto3.client("s3", **self._slow[0], config=self._slow[1])
        completer.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload,
                                              MultipartUpload={"Parts": parts})

    def _unfinished_upload(self, full_key: str) -> tuple[str | None, dict[int, tuple[int, str]]]:
        """The newest unfinished multipart upload of this key and its parts: number -> (size, ETag)."""
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=full_key).get("Uploads", [])
        uploads = sorted((u for u in uploads if u["Key"] == full_key), key=lambda u: u["Initiated"])
        if not uploads:
            return None, {}
        upload = uploads[-1]["UploadId"]
        done = {}
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=full_key, UploadId=upload)
        for page in pages:
            for part in page.get("Parts", []):
                done[part["PartNumber"]] = (part["Size"], part["ETag"])
        return upload, done

    def open_read(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]  # botocore's StreamingBody
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.describe(key)) from None

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.describe(key)) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        for page in pages:  # S3 lists keys in sorted order
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"
