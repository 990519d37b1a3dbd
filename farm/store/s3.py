"""The S3 store: AWS S3 and every S3-compatible service (MinIO, R2, B2 ...)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

from farm.store.base import Store, check_key


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
        self.client = boto3.client(
            "s3",
            endpoint_url=query.get("endpoint_url", [None])[0],
            region_name=query.get("region", [None])[0],
            config=config,
        )

    @property
    def url(self) -> str:
        return self._url

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

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
