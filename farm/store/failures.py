"""Which store errors are permanent: a write that fails with one of them fails the same way until a
person acts (frees disk space, fixes permissions, creates the bucket), so retrying it, or rendering
more images for that store, only wastes time and GPU. Everything else (a connection refused, a
timeout, a 503) may pass and is retried (worker/writer.py).

Pure: no boto3 import; an S3 error is recognised by botocore's `response` dict.
"""

from __future__ import annotations

import errno

# A full disk or quota, a read-only file system, no permission to write.
PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

# S3's answers that no retry changes: the bucket is gone, the keys are wrong or may not write,
# MinIO's disk is full.
PERMANENT_S3_CODES = frozenset({
    "AccessDenied", "AllAccessDisabled", "NoSuchBucket", "InvalidBucketName", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AccountProblem", "XMinioStorageFull",
})

# The start of a writer's failure reason for a permanent error (worker/writer.py); the worker sees
# it and stops rendering the job's other tasks (worker/tasks.py).
REFUSED = "the store refuses writes: "


def permanent(error: BaseException) -> bool:
    """Whether a store write that raised `error` will fail again until a person acts."""
    if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS:
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in PERMANENT_S3_CODES


def refused(reason: str | None) -> bool:
    """Whether a writer's failure reason says the store refuses writes for good."""
    return bool(reason) and reason.startswith(REFUSED)
