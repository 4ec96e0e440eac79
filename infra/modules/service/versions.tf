terraform {
  # 1.5: optional() object attributes with defaults, lifecycle pre/postconditions.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Checked (validate, checkov, LocalStack apply) against 5.100. Nothing
      # that 6.0 removes or deprecates is used (region and account come from
      # the queue's ARN, not from data sources).
      version = ">= 5.0"
    }
  }
}
