# Source bucket --(s3:ObjectCreated:*)--> [SNS topic] --> SQS queue --(redrive)--> DLQ
#
# Everything the s3-ingest worker reads from. The worker itself (ECS) is in
# ../service; it needs this module's queue_url, queue_arn, dlq_url, dlq_arn,
# bucket_name and kms_key_arn.

# Both read the provider's configuration; no API calls.
data "aws_partition" "current" {}
data "aws_region" "current" {}

# Only when the caller did not say which account this is.
data "aws_caller_identity" "current" {
  count = var.account_id == null ? 1 : 0
}

# A key given from outside: make sure it is customer managed. The variable
# validation already refuses "alias/aws/..."; an AWS managed key named by its
# key ARN can only be recognised by asking KMS.
data "aws_kms_key" "given" {
  count  = var.encryption == "kms" && var.kms_key_arn != null ? 1 : 0
  key_id = var.kms_key_arn

  lifecycle {
    postcondition {
      condition     = self.key_manager == "CUSTOMER"
      error_message = "kms_key_arn ${var.kms_key_arn} is an AWS managed key: S3 (and SNS) cannot use it, so every event would be dropped silently. Use a customer managed key whose key policy allows s3.amazonaws.com kms:GenerateDataKey and kms:Decrypt."
    }
  }
}

locals {
  partition  = data.aws_partition.current.partition
  account_id = var.account_id != null ? var.account_id : data.aws_caller_identity.current[0].account_id

  bucket_name = var.create_bucket ? aws_s3_bucket.this[0].id : var.bucket_name
  bucket_arn  = "arn:${local.partition}:s3:::${var.bucket_name}"

  queue_name = var.name
  queue_arn  = "arn:${local.partition}:sqs:${data.aws_region.current.name}:${local.account_id}:${var.name}"
  dlq_name   = "${var.name}-dlq"
  topic_name = "${var.name}-events"

  use_kms        = var.encryption == "kms"
  create_kms_key = local.use_kms && var.kms_key_arn == null
  # Always a key ARN (not an alias), so it can go into IAM policies as is.
  kms_key_arn = (
    !local.use_kms ? null :
    local.create_kms_key ? aws_kms_key.this[0].arn : data.aws_kms_key.given[0].arn
  )

  # One rule per filter element; ids must be unique within the bucket.
  filters = [
    for index, filter in var.filters : {
      id     = "${var.name}-${index}"
      prefix = filter.prefix
      suffix = filter.suffix
    }
  ]
}

# ---------------------------------------------------------------------------
# KMS (encryption = "kms" without a key of the caller's)
# ---------------------------------------------------------------------------

data "aws_iam_policy_document" "kms" {
  count = local.create_kms_key ? 1 : 0

  # The account administers the key through IAM, as with the default key
  # policy; the worker's task role gets kms:Decrypt/GenerateDataKey through
  # its own IAM policy (service module), which this statement makes effective.
  #checkov:skip=CKV_AWS_109:Key policies can only name "*" (this key); this is the standard root statement that delegates access control to IAM.
  #checkov:skip=CKV_AWS_111:Key policies can only name "*" (this key); this is the standard root statement that delegates access control to IAM.
  #checkov:skip=CKV_AWS_356:Key policies can only name "*" (this key) as the resource.
  statement {
    sid       = "AccountAdministersKeyThroughIam"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # S3 encrypts each event with a data key from this key when it sends it to
  # the queue (or publishes it to the topic). This is the statement the AWS
  # managed key alias/aws/sqs can never have. It follows the AWS S3 docs'
  # statement without source conditions on purpose: a condition S3 does not
  # send would drop events silently again. Who may send is decided by the
  # queue and topic policies below, which do check aws:SourceArn and
  # aws:SourceAccount.
  statement {
    sid       = "S3EncryptsEventNotifications"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
  }

  # SNS re-encrypts each event for the subscribed queue.
  dynamic "statement" {
    for_each = var.fanout_via_sns ? [1] : []
    content {
      sid       = "SnsDeliversToEncryptedQueue"
      effect    = "Allow"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = ["*"]
      principals {
        type        = "Service"
        identifiers = ["sns.amazonaws.com"]
      }
    }
  }
}

resource "aws_kms_key" "this" {
  count = local.create_kms_key ? 1 : 0

  description             = "s3-ingest ${var.name}: SQS queue, DLQ and SNS topic encryption; usable by S3 and SNS to deliver events"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_key_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms[0].json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  count = local.create_kms_key ? 1 : 0

  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this[0].key_id
}

# ---------------------------------------------------------------------------
# Source bucket (create_bucket = true)
# ---------------------------------------------------------------------------

resource "aws_s3_bucket" "this" {
  count = var.create_bucket ? 1 : 0

  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket that belongs to the platform's logging setup; enable it there (aws_s3_bucket_logging) if required.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery decision for the data owner, not part of the ingest pipeline; the worker reads each object once.
  #checkov:skip=CKV_AWS_145:Default encryption is SSE-S3 unless bucket_kms_key_arn is set (see aws_s3_bucket_server_side_encryption_configuration.this); a key is the data owner's choice.
  bucket        = var.bucket_name
  force_destroy = var.bucket_force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "this" {
  count = var.create_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.this[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ACLs off: the bucket owner owns every object a vendor uploads, so the
# worker's role in this account can read them.
resource "aws_s3_bucket_ownership_controls" "this" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.this[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.this[0].id
  versioning_configuration {
    status = var.bucket_versioning ? "Enabled" : "Suspended"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.this[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.bucket_kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.bucket_kms_key_arn
    }
    bucket_key_enabled = var.bucket_kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.this[0].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.bucket_noncurrent_version_expiration_days
    }
  }

  # Versioning must be configured before noncurrent-version rules apply.
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  count = var.create_bucket ? 1 : 0

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.this[0].arn, "${aws_s3_bucket.this[0].arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.this[0].id
  policy = data.aws_iam_policy_document.bucket[0].json

  # PutBucketPolicy is refused while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# ---------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------

resource "aws_sqs_queue" "dlq" {
  name = local.dlq_name

  # SQS keeps a message's ORIGINAL enqueue time when it redrives it to a
  # standard DLQ, and retention counts from that time. With the same
  # retention on both queues, a message that spent days being retried would
  # expire from the DLQ almost at once; the longest retention (14 days)
  # leaves time to look at it and redrive it.
  message_retention_seconds = var.dlq_message_retention_seconds

  # Only the ingest queue may use this queue as its dead-letter target. Set
  # here with the ingest queue's ARN spelled out (it cannot be referenced:
  # that queue's redrive policy references this one) rather than with a
  # separate aws_sqs_queue_redrive_allow_policy, whose delete waits for the
  # attribute to disappear, which LocalStack never reports (it keeps an
  # empty attribute), so `terraform destroy` hung there.
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [local.queue_arn]
  })

  sqs_managed_sse_enabled           = local.use_kms ? null : true
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = local.use_kms ? var.kms_data_key_reuse_period_seconds : null

  tags = var.tags
}

resource "aws_sqs_queue" "this" {
  name = local.queue_name

  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  # Long polling by default, for any consumer that does not ask for it.
  receive_wait_time_seconds = 20

  # The worker dead-letters a poison message itself, with a reason envelope,
  # after its own queue.max_receive_count attempts; this redrive is the
  # backstop for a message the worker cannot even handle (e.g. one that
  # crashes it). The worker hands messages back as fresh copies carrying
  # their attempt count (s3_ingest.attempts), so SQS's per-copy receive
  # count never runs ahead of the worker's count.
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  sqs_managed_sse_enabled           = local.use_kms ? null : true
  kms_master_key_id                 = local.kms_key_arn
  kms_data_key_reuse_period_seconds = local.use_kms ? var.kms_data_key_reuse_period_seconds : null

  tags = var.tags

  lifecycle {
    postcondition {
      condition     = self.arn == local.queue_arn
      error_message = "The queue's ARN ${self.arn} differs from ${local.queue_arn}, which the DLQ's redrive allow policy names."
    }
    precondition {
      condition     = var.kms_key_arn == null || local.use_kms
      error_message = "kms_key_arn is set but encryption is \"sqs-managed\"; set encryption = \"kms\" to use the key."
    }
    precondition {
      condition     = var.dlq_message_retention_seconds > var.message_retention_seconds
      error_message = "dlq_message_retention_seconds must be longer than message_retention_seconds: a redriven message keeps its original enqueue time, so it would expire from the DLQ almost at once."
    }
  }
}

data "aws_iam_policy_document" "queue" {
  # Direct S3 -> SQS: only this bucket, owned by this account. The account
  # condition matters because bucket names are global: a bucket with this
  # name in another account after a delete/re-create must not be able to send.
  dynamic "statement" {
    for_each = var.fanout_via_sns ? [] : [1]
    content {
      sid       = "S3SendsObjectCreatedEvents"
      effect    = "Allow"
      actions   = ["sqs:SendMessage"]
      resources = [aws_sqs_queue.this.arn]
      principals {
        type        = "Service"
        identifiers = ["s3.amazonaws.com"]
      }
      condition {
        test     = "ArnEquals"
        variable = "aws:SourceArn"
        values   = [local.bucket_arn]
      }
      condition {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [local.account_id]
      }
    }
  }

  # S3 -> SNS -> SQS: only this topic.
  dynamic "statement" {
    for_each = var.fanout_via_sns ? [1] : []
    content {
      sid       = "SnsDeliversObjectCreatedEvents"
      effect    = "Allow"
      actions   = ["sqs:SendMessage"]
      resources = [aws_sqs_queue.this.arn]
      principals {
        type        = "Service"
        identifiers = ["sns.amazonaws.com"]
      }
      condition {
        test     = "ArnEquals"
        variable = "aws:SourceArn"
        values   = [aws_sns_topic.this[0].arn]
      }
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [aws_sqs_queue.this.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "this" {
  queue_url = aws_sqs_queue.this.id
  policy    = data.aws_iam_policy_document.queue.json
}

data "aws_iam_policy_document" "dlq" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [aws_sqs_queue.dlq.arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.dlq.json
}

# ---------------------------------------------------------------------------
# Optional SNS fan-out
# ---------------------------------------------------------------------------

resource "aws_sns_topic" "this" {
  count = var.fanout_via_sns ? 1 : 0

  #checkov:skip=CKV_AWS_26:Encrypted with the customer key when encryption = "kms". With "sqs-managed" there is no SNS-managed equivalent S3 can publish to: alias/aws/sns has the same trap as alias/aws/sqs (S3 cannot use it, events are dropped silently).
  name              = local.topic_name
  kms_master_key_id = local.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "topic" {
  count = var.fanout_via_sns ? 1 : 0

  statement {
    sid       = "S3PublishesObjectCreatedEvents"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.this[0].arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [local.bucket_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }

  # The account itself manages and subscribes, as with SNS's default policy.
  statement {
    sid    = "AccountManagesTopic"
    effect = "Allow"
    actions = [
      "sns:GetTopicAttributes", "sns:SetTopicAttributes", "sns:AddPermission",
      "sns:RemovePermission", "sns:DeleteTopic", "sns:Subscribe",
      "sns:ListSubscriptionsByTopic", "sns:Publish",
    ]
    resources = [aws_sns_topic.this[0].arn]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # The fan-out: other teams' queues or functions.
  dynamic "statement" {
    for_each = length(var.sns_subscriber_principals) > 0 ? [1] : []
    content {
      sid       = "OtherConsumersSubscribe"
      effect    = "Allow"
      actions   = ["sns:Subscribe"]
      resources = [aws_sns_topic.this[0].arn]
      principals {
        type        = "AWS"
        identifiers = var.sns_subscriber_principals
      }
    }
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.this[0].arn]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sns_topic_policy" "this" {
  count = var.fanout_via_sns ? 1 : 0

  arn    = aws_sns_topic.this[0].arn
  policy = data.aws_iam_policy_document.topic[0].json
}

resource "aws_sns_topic_subscription" "queue" {
  count = var.fanout_via_sns ? 1 : 0

  topic_arn            = aws_sns_topic.this[0].arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.this.arn
  raw_message_delivery = var.sns_raw_message_delivery

  # Without the queue policy the subscription exists but SNS cannot deliver.
  depends_on = [aws_sqs_queue_policy.this]
}

# ---------------------------------------------------------------------------
# The notification
# ---------------------------------------------------------------------------

resource "aws_s3_bucket_notification" "this" {
  bucket = local.bucket_name

  dynamic "queue" {
    for_each = var.fanout_via_sns ? [] : local.filters
    content {
      id            = queue.value.id
      queue_arn     = aws_sqs_queue.this.arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = queue.value.prefix
      filter_suffix = queue.value.suffix
    }
  }

  dynamic "topic" {
    for_each = var.fanout_via_sns ? local.filters : []
    content {
      id            = topic.value.id
      topic_arn     = aws_sns_topic.this[0].arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = topic.value.prefix
      filter_suffix = topic.value.suffix
    }
  }

  # S3 checks that it may deliver when the configuration is put (it sends an
  # s3:TestEvent, which the worker deletes): the queue/topic policies, the
  # subscription and the key policy must exist first, or the put fails with
  # "Unable to validate the following destination configurations".
  depends_on = [
    aws_sqs_queue_policy.this,
    aws_sns_topic_policy.this,
    aws_sns_topic_subscription.queue,
    aws_kms_key.this,
    aws_s3_bucket_policy.this,
  ]
}
