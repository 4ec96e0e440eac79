variable "region" {
  description = "AWS region for everything (bucket, queues, service)."
  type        = string
}

variable "name" {
  description = "Base name: queue \"<name>\", DLQ \"<name>-dlq\", ECS service \"<name>\"."
  type        = string
  default     = "s3-ingest"
}

variable "bucket_name" {
  description = "Bucket the vendors upload to."
  type        = string
}

variable "create_bucket" {
  description = "Create the bucket (true) or notify from an existing one (false; this replaces the bucket's notification configuration)."
  type        = bool
  default     = true
}

variable "filters" {
  description = "Key filters for the notification, one rule each."
  type = list(object({
    prefix = optional(string)
    suffix = optional(string)
  }))
  default = [{}]
}

variable "fanout_via_sns" {
  description = "Route events through an SNS topic so other consumers can subscribe too."
  type        = bool
  default     = false
}

variable "encryption" {
  description = "\"sqs-managed\" or \"kms\" (a customer managed key; created unless kms_key_arn is given)."
  type        = string
  default     = "sqs-managed"
}

variable "kms_key_arn" {
  description = "Existing customer managed key for encryption = \"kms\" (never alias/aws/sqs)."
  type        = string
  default     = null
}

variable "image" {
  description = "s3-ingest image with an explicit tag or digest."
  type        = string
}

variable "worker_max_receive_count" {
  description = "Receives after which the worker dead-letters a message with a reason; the queue's own redrive is set a few receives later as the backstop."
  type        = number
  default     = 5
}

variable "worker_environment" {
  description = "Routes, sinks and tuning for the worker as S3_INGEST__... variables (on top of worker_config)."
  type        = map(string)
  default     = {}
}

variable "worker_config" {
  description = "The worker's config file as TOML text, e.g. file(\"s3-ingest.toml\"); no secrets in it (see worker_secrets)."
  type        = string
  default     = null
}

variable "worker_secrets" {
  description = "Variables the worker reads from Secrets Manager or SSM (name => ARN), e.g. the postgres sink's url_env."
  type        = map(string)
  default     = {}
}

variable "worker_secrets_kms_key_arns" {
  description = "Customer managed KMS keys of worker_secrets."
  type        = list(string)
  default     = []
}

variable "volumes" {
  description = "Writable volumes for the worker (the parquet_dir sink's path); see the service module."
  type = list(object({
    name           = string
    container_path = string
    read_only      = optional(bool, false)
    efs = optional(object({
      file_system_arn  = string
      access_point_arn = optional(string)
      root_directory   = optional(string)
    }))
  }))
  default = [{ name = "data", container_path = "/data" }]
}

variable "cluster_name" {
  description = "Existing ECS cluster with Container Insights, or null to create one."
  type        = string
  default     = null
}

variable "vpc_id" {
  description = "VPC of the subnets (for the created security group)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the tasks."
  type        = list(string)
}

variable "autoscaling_min_capacity" {
  description = "Fewest tasks."
  type        = number
  default     = 1
}

variable "autoscaling_max_capacity" {
  description = "Most tasks."
  type        = number
  default     = 10
}

variable "alarm_topic_arn" {
  description = "SNS topic for the alarms, or null."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every resource (provider default_tags)."
  type        = map(string)
  default     = {}
}
