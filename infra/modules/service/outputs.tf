output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_arn" {
  description = "ARN of the ECS service."
  value       = aws_ecs_service.this.id
}

output "cluster_name" {
  description = "ECS cluster the service runs in (created or given)."
  value       = local.cluster_name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = local.cluster_arn
}

output "task_definition_arn" {
  description = "ARN (with revision) of the task definition the service runs; changes with every new image."
  value       = aws_ecs_task_definition.this.arn
}

output "task_role_arn" {
  description = "ARN of the task role (the worker's own permissions)."
  value       = aws_iam_role.task.arn
}

output "task_role_name" {
  description = "Name of the task role, to attach further policies (e.g. for a future sink)."
  value       = aws_iam_role.task.name
}

output "execution_role_arn" {
  description = "ARN of the execution role (image pull, log stream)."
  value       = aws_iam_role.execution.arn
}

output "log_group_name" {
  description = "CloudWatch Logs group with the worker's JSON logs."
  value       = aws_cloudwatch_log_group.this.name
}

output "security_group_ids" {
  description = "Security groups of the tasks (given or created)."
  value       = local.security_group_ids
}

output "dlq_alarm_arn" {
  description = "ARN of the DLQ-not-empty alarm."
  value       = aws_cloudwatch_metric_alarm.dlq_not_empty.arn
}

output "oldest_message_age_alarm_arn" {
  description = "ARN of the oldest-message-age alarm."
  value       = aws_cloudwatch_metric_alarm.oldest_message_age.arn
}

output "worker_environment" {
  description = "The environment the worker container gets (for review; contains no secrets)."
  value       = local.environment
}
