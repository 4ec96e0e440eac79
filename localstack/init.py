#!/usr/bin/env python3
"""Create the AWS resources s3-ingest needs in LocalStack, idempotently.

  bucket --(s3:ObjectCreated:*)--> queue --(after N receives)--> DLQ

Run it with the LocalStack venv's python (it needs boto3), e.g.

  ~/.cache/s3-ingest/localstack-venv/bin/python localstack/init.py

On success it prints shell-friendly lines a Makefile can capture:

  QUEUE_URL=...
  QUEUE_ARN=...
  DLQ_URL=...
  DLQ_ARN=...
  BUCKET=...

Everything else (progress) goes to stderr. Safe to run any number of times:
existing resources are reused and their attributes/notification re-applied.
The same script serves as the LocalStack ready hook in docker-compose.yml.
"""

import argparse
import json
import os
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"


def log(msg):
    print(f"init.py: {msg}", file=sys.stderr)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Create bucket, SQS queue + DLQ and the S3->SQS notification in LocalStack.",
    )
    p.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        help="LocalStack endpoint (default: $AWS_ENDPOINT_URL or http://127.0.0.1:4566)",
    )
    p.add_argument("--bucket", default="vendor-drops", help="bucket name (default: %(default)s)")
    p.add_argument("--queue", default="s3-ingest-events", help="queue name (default: %(default)s)")
    p.add_argument("--dlq", default="s3-ingest-dlq", help="dead-letter queue name (default: %(default)s)")
    p.add_argument(
        "--max-receive-count",
        type=int,
        default=5,
        help="receives before a message moves to the DLQ (default: %(default)s)",
    )
    p.add_argument(
        "--visibility-timeout",
        type=int,
        default=60,
        help="queue VisibilityTimeout in seconds (default: %(default)s)",
    )
    return p.parse_args(argv)


def clients(endpoint):
    # LocalStack accepts any credentials; pin them (and the region) so a
    # developer's real AWS profile is never picked up by accident.
    kw = dict(
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        # Path-style keeps bucket names out of the hostname (no DNS needed).
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


def ensure_bucket(s3, bucket):
    try:
        s3.head_bucket(Bucket=bucket)
        log(f"bucket {bucket} exists")
        return
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        # In us-east-1 CreateBucket must not carry a LocationConstraint.
        s3.create_bucket(Bucket=bucket)
        log(f"created bucket {bucket}")
    except ClientError as e:
        # Lost a race with another init run: fine.
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def ensure_queue(sqs, name, attributes):
    # CreateQueue is idempotent only when the attributes match, so create with
    # none and then set them: re-runs with different flags converge instead of
    # failing with QueueAlreadyExists.
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    if attributes:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    log(f"queue {name}: {url}")
    return url, arn


def main(argv=None):
    args = parse_args(argv)
    s3, sqs = clients(args.endpoint_url)

    ensure_bucket(s3, args.bucket)

    dlq_url, dlq_arn = ensure_queue(sqs, args.dlq, {})

    # Attributes are set below in one call, once the queue's ARN is known for
    # the policy (ask LocalStack rather than guess the account id).
    queue_url, queue_arn = ensure_queue(sqs, args.queue, {})
    bucket_arn = f"arn:aws:s3:::{args.bucket}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AllowS3SendMessage",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": bucket_arn}},
            }
        ],
    }
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "VisibilityTimeout": str(args.visibility_timeout),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(args.max_receive_count)}
            ),
            "Policy": json.dumps(policy),
        },
    )
    log(
        f"queue {args.queue}: VisibilityTimeout={args.visibility_timeout}, "
        f"redrive to {args.dlq} after {args.max_receive_count} receives"
    )

    # PutBucketNotificationConfiguration replaces the whole configuration, which
    # is exactly what makes re-running idempotent. S3 (and LocalStack) send an
    # s3:TestEvent message to the queue each time this is applied.
    s3.put_bucket_notification_configuration(
        Bucket=args.bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "s3-ingest",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                }
            ]
        },
    )
    log(f"bucket {args.bucket}: s3:ObjectCreated:* -> {args.queue}")

    print(f"QUEUE_URL={queue_url}")
    print(f"QUEUE_ARN={queue_arn}")
    print(f"DLQ_URL={dlq_url}")
    print(f"DLQ_ARN={dlq_arn}")
    print(f"BUCKET={args.bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
