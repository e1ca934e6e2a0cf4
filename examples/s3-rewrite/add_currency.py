"""Add a currency to every JSON invoice under the prefix. Runs against whatever endpoint shadow hands over:
the shadow's during `shadow plan`, production's during `shadow apply`."""

import json
import os

import boto3

s3 = boto3.client("s3")  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID … come from shadow
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="invoices/2026/")
for page in pages:
    for item in page.get("Contents", []):
        if not item["Key"].endswith(".json"):
            continue
        doc = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        if "currency" in doc:
            continue
        doc["currency"] = os.environ.get("CURRENCY", "EUR")
        s3.put_object(Bucket=bucket, Key=item["Key"], Body=json.dumps(doc, indent=2).encode(),
                      ContentType="application/json")
