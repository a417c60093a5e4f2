"""Sets the test bucket's CORS configuration with the root keys, for
tools/testenv/up.sh (run by the botocore venv of tools/pyvenv.sh).

Browsers may POST forms (and PUT and GET) to the bucket from any page served
over plain http: in the test environment every page is on a loopback port
that changes from run to run, and SeaweedFS matches one wildcard only at the
start of an origin (`http://*`), not in its port. A real bucket names its
app's origins instead (docs/src/consuming.md, "Browser uploads and CORS").

    s3_cors.py ENDPOINT REGION BUCKET   (keys in TESTENV_ROOT_ACCESS_KEY_ID
                                         and TESTENV_ROOT_SECRET_ACCESS_KEY)
"""
import os
import sys

import botocore.session
from botocore.config import Config

endpoint, region, bucket = sys.argv[1:4]
s3 = botocore.session.get_session().create_client(
    "s3",
    region_name=region,
    endpoint_url=endpoint,
    aws_access_key_id=os.environ["TESTENV_ROOT_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["TESTENV_ROOT_SECRET_ACCESS_KEY"],
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
)
s3.put_bucket_cors(
    Bucket=bucket,
    CORSConfiguration={
        "CORSRules": [
            {
                "AllowedOrigins": ["http://*"],
                "AllowedMethods": ["POST", "PUT", "GET", "HEAD"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag", "Location"],
                "MaxAgeSeconds": 600,
            }
        ]
    },
)
rules = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
if rules[0]["AllowedOrigins"] != ["http://*"]:
    sys.exit(f"s3_cors.py: the bucket's CORS rules read back as {rules}")
