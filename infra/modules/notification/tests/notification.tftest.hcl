# Offline tests of the module's guard rails (`terraform test`, run by
# infra/check.sh). The provider is mocked: nothing is created anywhere.
# tests/it/terraform.rs applies the module to LocalStack for real.

mock_provider "aws" {
  # Policy documents are rendered by the provider; a mock needs valid JSON.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = { arn = "arn:aws:sqs:eu-west-1:123456789012:ingest" }
  }
}

variables {
  name        = "ingest"
  bucket_name = "acme-vendor-drops"
  account_id  = "123456789012"
}

run "defaults_to_sqs_managed_encryption_and_a_longer_lived_dlq" {
  command = apply

  assert {
    condition     = aws_sqs_queue.this.sqs_managed_sse_enabled == true && aws_sqs_queue.dlq.sqs_managed_sse_enabled == true
    error_message = "queue and DLQ use SSE-SQS by default"
  }
  assert {
    condition     = aws_sqs_queue.dlq.message_retention_seconds == 1209600 && aws_sqs_queue.this.message_retention_seconds < aws_sqs_queue.dlq.message_retention_seconds
    error_message = "DLQ keeps messages 14 days, longer than the queue"
  }
  assert {
    condition     = jsondecode(aws_sqs_queue.this.redrive_policy).maxReceiveCount == 10
    error_message = "redrive after 10 receives by default"
  }
  assert {
    condition     = jsondecode(aws_sqs_queue.dlq.redrive_allow_policy).sourceQueueArns == ["arn:aws:sqs:eu-west-1:123456789012:ingest"]
    error_message = "only the ingest queue may redrive into the DLQ"
  }
  assert {
    condition     = length(aws_kms_key.this) == 0 && length(aws_sns_topic.this) == 0 && length(aws_s3_bucket.this) == 0
    error_message = "no key, topic or bucket unless asked for"
  }
  assert {
    condition     = one(aws_s3_bucket_notification.this.queue).events == toset(["s3:ObjectCreated:*"])
    error_message = "one ObjectCreated rule straight to the queue"
  }
}

run "rejects_the_aws_managed_sqs_key_by_alias" {
  command = plan
  variables {
    encryption  = "kms"
    kms_key_arn = "alias/aws/sqs"
  }
  expect_failures = [var.kms_key_arn]
}

run "rejects_the_aws_managed_sqs_key_by_alias_arn" {
  command = plan
  variables {
    encryption  = "kms"
    kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:alias/aws/sqs"
  }
  expect_failures = [var.kms_key_arn]
}

run "rejects_an_aws_managed_key_given_by_key_arn" {
  command = plan
  variables {
    encryption  = "kms"
    kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
  }
  override_data {
    target = data.aws_kms_key.given
    values = {
      arn         = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
      key_manager = "AWS"
    }
  }
  expect_failures = [data.aws_kms_key.given]
}

run "uses_a_customer_managed_key_as_given" {
  command = plan
  variables {
    encryption  = "kms"
    kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:alias/ingest"
  }
  override_data {
    target = data.aws_kms_key.given
    values = {
      arn         = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
      key_manager = "CUSTOMER"
    }
  }
  assert {
    condition     = aws_sqs_queue.this.kms_master_key_id == "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b" && aws_sqs_queue.dlq.kms_master_key_id == aws_sqs_queue.this.kms_master_key_id
    error_message = "queue and DLQ are encrypted with the given key, by its key ARN"
  }
  assert {
    condition     = length(aws_kms_key.this) == 0
    error_message = "no key is created when one is given"
  }
}

run "creates_a_key_s3_and_sns_can_use" {
  command = plan
  variables {
    encryption     = "kms"
    fanout_via_sns = true
  }
  assert {
    condition     = length(aws_kms_key.this) == 1 && aws_kms_key.this[0].enable_key_rotation
    error_message = "a rotating customer managed key is created"
  }
  assert {
    condition = toset(flatten([
      for statement in data.aws_iam_policy_document.kms[0].statement : [
        for principal in statement.principals : principal.identifiers if principal.type == "Service"
      ]
    ])) == toset(["s3.amazonaws.com", "sns.amazonaws.com"])
    error_message = "the key policy admits S3 and SNS"
  }
}

run "fans_out_through_sns" {
  command = plan
  variables {
    fanout_via_sns = true
    filters        = [{ prefix = "incoming/", suffix = ".csv" }, { prefix = "incoming/", suffix = ".parquet" }]
  }
  assert {
    condition     = length(aws_s3_bucket_notification.this.topic) == 2 && length(aws_s3_bucket_notification.this.queue) == 0
    error_message = "one topic rule per filter, no direct queue rule"
  }
  assert {
    condition     = aws_sns_topic_subscription.queue[0].protocol == "sqs" && aws_sns_topic_subscription.queue[0].raw_message_delivery
    error_message = "the queue subscribes with raw delivery"
  }
}

run "a_key_without_kms_encryption_is_an_error" {
  command = plan
  variables {
    kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
  }
  expect_failures = [aws_sqs_queue.this]
}

run "dlq_retention_must_exceed_the_queue_retention" {
  command = plan
  variables {
    message_retention_seconds     = 1209600
    dlq_message_retention_seconds = 1209600
  }
  expect_failures = [aws_sqs_queue.this]
}

run "creates_a_locked_down_bucket" {
  command = plan
  variables {
    create_bucket = true
  }
  assert {
    condition     = aws_s3_bucket_public_access_block.this[0].block_public_policy && aws_s3_bucket_versioning.this[0].versioning_configuration[0].status == "Enabled"
    error_message = "created bucket blocks public access and is versioned"
  }
}
