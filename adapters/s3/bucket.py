"""One target's bucket through one client: the writes a restore (or a verification) sends, one object or one
batch at a time. Planning which to send is :mod:`adapters.s3.restore`'s."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from adapters.s3.observe import describe
from shadow.errors import InfrastructureError

DELETE_BATCH = 1000  # objects per DeleteObjects request: S3's limit

_XML_UNSAFE = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(key: str) -> bool:
    """``key`` survives an XML request body unchanged (DeleteObjects sends keys as XML text)."""
    return _XML_UNSAFE.search(key) is None


def object_args(props: dict[str, Any]) -> dict[str, Any]:
    """put_object / create_multipart_upload arguments that give an object these observed properties."""
    args: dict[str, Any] = {"Metadata": props.get("metadata") or {}}
    if props.get("content_type"):
        args["ContentType"] = props["content_type"]
    if props.get("tags"):
        args["Tagging"] = urlencode(props["tags"])
    return args


@dataclass(frozen=True)
class Bucket:
    """``bucket`` (scope ``prefix``) through ``client``; errors name ``target`` and ``where`` it is."""

    client: Any
    bucket: str
    prefix: str
    target: str
    where: str

    def retag(self, key: str, tags: dict[str, str]) -> None:
        if tags:
            self.client.put_object_tagging(Bucket=self.bucket, Key=key,
                                           Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        else:  # an empty TagSet is a delete (and moto's server rejects an empty PUT)
            self.client.delete_object_tagging(Bucket=self.bucket, Key=key)

    def batched_deletes(self, objects: list[dict[str, str]]) -> list[Any]:
        """One DeleteObjects per 1,000 objects (S3's limit). Without a version id a delete on a versioned bucket
        only adds a delete marker; with one it removes exactly that version."""
        batchable = [o for o in objects if xml_safe(o["Key"])]
        ops: list[Any] = [lambda batch=batchable[i:i + DELETE_BATCH]: self.delete_batch(batch)
                          for i in range(0, len(batchable), DELETE_BATCH)]
        # A key XML cannot carry as it is (control characters; a carriage return, which XML turns into a line
        # feed and so into another key) is deleted on its own: its name travels in the URL.
        return ops + [lambda o=o: self.client.delete_object(Bucket=self.bucket, **o)
                      for o in objects if not xml_safe(o["Key"])]

    def delete_batch(self, batch: list[dict[str, str]]) -> None:
        errors = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
        if errors:
            first = errors[0]
            raise InfrastructureError(f"{len(errors)} of {len(batch)} deletes refused by {self.where}, e.g. "
                                      f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message', '')}",
                                      target=self.target)

    def head(self, key: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """HEAD of ``key``: (its answer, {}) or, when it is not there, (None, the 404's headers)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key), {}
        except ClientError as exc:
            response = exc.response.get("ResponseMetadata", {})
            if response.get("HTTPStatusCode") != 404:
                raise
            return None, response.get("HTTPHeaders", {})

    def copy_back(self, key: str, entry: dict[str, Any], props: dict[str, Any]) -> None:
        """The checkpoint version ``entry`` names, copied over ``key``, with the tags ``props`` names — or, when
        the checkpoint did not record them, with that version's own tags (S3 keeps tags per version)."""
        client = self.client
        source = {"Bucket": self.bucket, "Key": key, "VersionId": entry["version_id"]}
        parts = entry.get("parts")
        if parts is None and "-" in str(entry.get("etag", "")):
            parts = self.part_sizes(key, entry)
        if parts:
            if not {"content_type", "metadata", "tags"} <= props.keys():
                # A multipart rebuild states every property itself: what the checkpoint did not record is the
                # version's (which never changes, but for its tags).
                props = {**describe(client, self.bucket, key, entry["version_id"]), **props}
            self.multipart(key, props, parts,
                           lambda n, byte_range, upload: client.upload_part_copy(
                               Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n, CopySource=source,
                               CopySourceRange=byte_range)["CopyPartResult"]["ETag"])
            return
        # Content type and metadata never change on a version, so they come with the copy; tags can, so they are
        # set to the checkpoint's in the same request when it recorded them.
        tagging: dict[str, Any] = {"TaggingDirective": "COPY"} if "tags" not in props else {
            "TaggingDirective": "REPLACE", "Tagging": urlencode(props["tags"] or {})}
        client.copy_object(Bucket=self.bucket, Key=key, CopySource=source, MetadataDirective="COPY", **tagging)

    def part_sizes(self, key: str, entry: dict[str, Any]) -> list[int]:
        """The part sizes of a multipart object's checkpoint version (a HEAD per part)."""
        extra = {"VersionId": entry["version_id"]} if "version_id" in entry else {}
        count = int(str(entry["etag"]).rsplit("-", 1)[1])
        return [int(self.client.head_object(Bucket=self.bucket, Key=key, PartNumber=n, **extra)["ContentLength"])
                for n in range(1, count + 1)]

    def multipart(self, key: str, props: dict[str, Any], parts: list[int],
                  send_part: Callable[[int, str, str], str]) -> None:
        """Rebuild an object from parts of the checkpoint's sizes: the same parts give the same ETag."""
        client = self.client
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=key, **object_args(props))["UploadId"]
        try:
            done, start = [], 0
            for n, size in enumerate(parts, start=1):
                done.append({"PartNumber": n, "ETag": send_part(n, f"bytes={start}-{start + size - 1}", upload)})
                start += size
            client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                             MultipartUpload={"Parts": done})
        except BaseException:
            client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise

    def put_back(self, key: str, path: Any, props: dict[str, Any], parts: list[int] | None) -> None:
        """The checkpoint's copy at ``path`` written over ``key`` (in its parts, when it was a multipart upload)."""
        if parts:
            def send(n: int, byte_range: str, upload: str) -> str:
                first, last = (int(x) for x in byte_range.removeprefix("bytes=").split("-"))
                with open(path, "rb") as fh:
                    fh.seek(first)
                    body = fh.read(last - first + 1)
                return str(self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n,
                                                   Body=body)["ETag"])

            self.multipart(key, props, parts, send)
            return
        with open(path, "rb") as fh:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=fh, **object_args(props))
