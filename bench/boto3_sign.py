"""Baseline for the signing benchmark: boto3's generate_presigned_url (what the
AWS docs' Python examples use) presigning the same PUT as the operator, on one
core, for a fixed time. Prints {"urls_per_second": N}."""
import json
import sys
import time

import boto3
from botocore.config import Config

endpoint, bucket, key, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
client = boto3.client(
    "s3",
    region_name="us-east-1",
    endpoint_url=endpoint,
    aws_access_key_id="AKIDBENCHMARK",
    aws_secret_access_key="benchmark-secret",
    aws_session_token="benchmark-session-token",
    config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                  request_checksum_calculation="when_required"),
)
params = {"Bucket": bucket, "Key": key, "ContentType": "text/csv", "ContentLength": 1024}
n = 0
start = time.perf_counter()
deadline = start + seconds
while time.perf_counter() < deadline:
    for _ in range(100):
        client.generate_presigned_url("put_object", Params=params, ExpiresIn=3600)
    n += 100
print(json.dumps({"urls_per_second": n / (time.perf_counter() - start)}))
