# Inputs of the notification module: source bucket -> (SNS) -> SQS queue + DLQ.

variable "name" {
  description = "Name of the ingest queue; the DLQ is \"<name>-dlq\", the optional SNS topic \"<name>-events\" and the optional KMS alias \"alias/<name>\"."
  type        = string

  validation {
    # SQS names: 1-80 characters of [A-Za-z0-9_-]; "-dlq" is appended for the
    # DLQ. No ".fifo": S3 event notifications only target standard queues.
    condition     = can(regex("^[A-Za-z0-9_-]{1,76}$", var.name))
    error_message = "name must be 1-76 characters of letters, digits, '-' and '_' (the DLQ adds \"-dlq\")."
  }
}

variable "create_bucket" {
  description = "Create the source bucket (true) or attach the notification to an existing bucket named bucket_name (false). Note: S3 keeps ONE notification configuration per bucket, so on an existing bucket this module replaces any notification configuration already there; use fanout_via_sns = true to share the events."
  type        = bool
  default     = false
}

variable "bucket_name" {
  description = "Name of the source bucket (created when create_bucket is true, otherwise it must exist)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 lowercase letters, digits, '.' and '-'."
  }
}

variable "bucket_force_destroy" {
  description = "Only with create_bucket: let `terraform destroy` delete the bucket even when it still holds objects (all versions). Keep false in production."
  type        = bool
  default     = false
}

variable "bucket_versioning" {
  description = "Only with create_bucket: enable versioning. Recommended: notifications then carry a versionId, which the worker pins every read to, so an overwritten key is never read as a mix of two versions."
  type        = bool
  default     = true
}

variable "bucket_kms_key_arn" {
  description = "Only with create_bucket: customer managed KMS key ARN for the bucket's default encryption (SSE-KMS). null uses SSE-S3. If set, grant the worker kms:Decrypt on it (service module: source_kms_key_arns)."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/", var.bucket_kms_key_arn))
    error_message = "bucket_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}

variable "bucket_noncurrent_version_expiration_days" {
  description = "Only with create_bucket: days after which noncurrent object versions are deleted (the worker only reads the version a notification names, within the queue's retention)."
  type        = number
  default     = 30

  validation {
    condition     = var.bucket_noncurrent_version_expiration_days >= 1
    error_message = "bucket_noncurrent_version_expiration_days must be at least 1."
  }
}

variable "filters" {
  description = "Object key filters; one S3 notification rule (s3:ObjectCreated:*) per element. An element with neither prefix nor suffix matches every key. S3 rejects overlapping rules, e.g. two elements with the same prefix and no suffix."
  type = list(object({
    prefix = optional(string)
    suffix = optional(string)
  }))
  default = [{}]

  validation {
    condition     = length(var.filters) >= 1
    error_message = "filters needs at least one element; use [{}] to match every key."
  }
}

variable "fanout_via_sns" {
  description = "Publish the bucket's events to an SNS topic that the queue subscribes to, instead of straight to the queue, so other consumers can subscribe to the same events (S3 allows one notification configuration per bucket, and no two overlapping rules)."
  type        = bool
  default     = false
}

variable "sns_raw_message_delivery" {
  description = "With fanout_via_sns: deliver the S3 event to SQS as is (true) or inside an SNS envelope (false). The worker reads both."
  type        = bool
  default     = true
}

variable "sns_subscriber_principals" {
  description = "With fanout_via_sns: AWS account IDs or IAM principal ARNs allowed to subscribe their own endpoints to the topic (the fan-out)."
  type        = list(string)
  default     = []
}

variable "encryption" {
  description = "Server-side encryption of the queue, the DLQ and the SNS topic: \"sqs-managed\" (SSE-SQS, no key to manage; an SNS topic then stays unencrypted, see README) or \"kms\" (a customer managed key: kms_key_arn, or one this module creates)."
  type        = string
  default     = "sqs-managed"

  validation {
    condition     = contains(["sqs-managed", "kms"], var.encryption)
    error_message = "encryption must be \"sqs-managed\" or \"kms\"."
  }
}

variable "kms_key_arn" {
  description = "With encryption = \"kms\": ARN of an existing CUSTOMER managed key whose key policy lets s3.amazonaws.com (and sns.amazonaws.com with fanout_via_sns) call kms:GenerateDataKey and kms:Decrypt. null creates such a key. AWS managed keys (alias/aws/sqs, alias/aws/sns) are rejected."
  type        = string
  default     = null

  # The silent-failure trap: with a queue encrypted under the AWS managed key
  # alias/aws/sqs, PutBucketNotificationConfiguration succeeds, but every
  # event is dropped, because that key's policy only admits principals of
  # this account calling through SQS; the S3 service principal is not one
  # of them and nobody can edit an AWS managed key's policy. Nothing errors,
  # nothing is logged in the account, the queue just stays empty. Same
  # for alias/aws/sns on a topic. So refuse every "alias/aws/..." form here
  # (name or ARN), and check any key that gets past this (e.g. an AWS managed
  # key given by its key ARN) with a postcondition on its KeyManager, see
  # data.aws_kms_key.given in main.tf.
  validation {
    condition     = var.kms_key_arn == null || !can(regex("(^|:)alias/aws/", var.kms_key_arn))
    error_message = "kms_key_arn must not be an AWS managed key (alias/aws/sqs, alias/aws/sns, ...): S3 and SNS cannot use it, so S3 would silently drop every event. Use a customer managed key, or leave kms_key_arn null to have this module create one."
  }

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/", var.kms_key_arn))
    error_message = "kms_key_arn must be a full KMS key or alias ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}

variable "kms_key_deletion_window_days" {
  description = "With encryption = \"kms\" and a key created by this module: waiting period before a destroyed key is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_key_deletion_window_days >= 7 && var.kms_key_deletion_window_days <= 30
    error_message = "kms_key_deletion_window_days must be between 7 and 30."
  }
}

variable "kms_data_key_reuse_period_seconds" {
  description = "With encryption = \"kms\": how long SQS reuses a data key before calling KMS again (fewer KMS calls and lower cost the longer)."
  type        = number
  default     = 300

  validation {
    condition     = var.kms_data_key_reuse_period_seconds >= 60 && var.kms_data_key_reuse_period_seconds <= 86400
    error_message = "kms_data_key_reuse_period_seconds must be between 60 and 86400."
  }
}

variable "visibility_timeout_seconds" {
  description = "Queue default visibility timeout. Match the worker's queue.visibility_timeout_secs (default 300); the worker extends it while a file is processed."
  type        = number
  default     = 300

  validation {
    condition     = var.visibility_timeout_seconds >= 0 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds must be between 0 and 43200."
  }
}

variable "message_retention_seconds" {
  description = "How long an unprocessed event stays on the ingest queue (default 4 days). Must be shorter than dlq_message_retention_seconds."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "dlq_message_retention_seconds" {
  description = "How long a dead-lettered message stays on the DLQ (default and maximum: 14 days). Must be longer than message_retention_seconds, see main.tf."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_message_retention_seconds >= 60 && var.dlq_message_retention_seconds <= 1209600
    error_message = "dlq_message_retention_seconds must be between 60 and 1209600 (14 days)."
  }
}

variable "max_receive_count" {
  description = "SQS redrive: receives (of one copy: the worker hands messages back as copies carrying their attempt count) after which SQS itself moves a message to the DLQ. Keep it ABOVE the worker's queue.max_receive_count (default 5), so the worker dead-letters first with a reason envelope and this redrive is only the backstop (e.g. for a worker that crashes on a message)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "account_id" {
  description = "AWS account ID of this deployment: the bucket's owner (the aws:SourceAccount in the queue and topic policies) and the account the queue, topic and key are created in; the module assumes they are one account. null looks it up with sts:GetCallerIdentity."
  type        = string
  default     = null

  validation {
    condition     = var.account_id == null || can(regex("^[0-9]{12}$", var.account_id))
    error_message = "account_id must be a 12-digit AWS account ID."
  }
}

variable "tags" {
  description = "Tags for every resource that takes tags."
  type        = map(string)
  default     = {}
}
