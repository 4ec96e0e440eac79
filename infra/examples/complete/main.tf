# The whole deployment: the vendor bucket notifies an SQS queue (with DLQ),
# and s3-ingest runs on ECS Fargate, scaled on that queue's backlog.
#
#   cp terraform.tfvars.example terraform.tfvars   # then edit
#   terraform init && terraform apply

module "notification" {
  source = "../../modules/notification"

  name          = var.name
  bucket_name   = var.bucket_name
  create_bucket = var.create_bucket
  filters       = var.filters

  fanout_via_sns = var.fanout_via_sns
  encryption     = var.encryption
  kms_key_arn    = var.kms_key_arn

  # The queue's visibility timeout and the worker's match.
  visibility_timeout_seconds = 300
  # The worker dead-letters first (with a reason); SQS's redrive only catches
  # what the worker never gets to handle.
  max_receive_count = var.worker_max_receive_count + 3

  tags = var.tags
}

module "service" {
  source = "../../modules/service"

  name  = var.name
  image = var.image

  queue_url         = module.notification.queue_url
  queue_arn         = module.notification.queue_arn
  dlq_url           = module.notification.dlq_url
  dlq_arn           = module.notification.dlq_arn
  queue_kms_key_arn = module.notification.kms_key_arn

  # Read access exactly where the notification points.
  source_buckets = [{
    bucket   = module.notification.bucket_name
    prefixes = distinct([for filter in var.filters : filter.prefix == null ? "" : filter.prefix])
  }]

  environment = merge({
    S3_INGEST__QUEUE__VISIBILITY_TIMEOUT_SECS = "300"
    S3_INGEST__QUEUE__MAX_RECEIVE_COUNT       = tostring(var.worker_max_receive_count)
  }, var.worker_environment)

  config               = var.worker_config
  secrets              = var.worker_secrets
  secrets_kms_key_arns = var.worker_secrets_kms_key_arns

  volumes = var.volumes

  cluster_name = var.cluster_name
  vpc_id       = var.vpc_id
  subnet_ids   = var.subnet_ids

  autoscaling_min_capacity = var.autoscaling_min_capacity
  autoscaling_max_capacity = var.autoscaling_max_capacity
  alarm_topic_arn          = var.alarm_topic_arn

  tags = var.tags
}
