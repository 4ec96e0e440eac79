terraform {
  # 1.5: optional() object attributes with defaults, lifecycle pre/postconditions.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Checked (validate, checkov, LocalStack apply) against 5.100. Widen the
      # upper bound only after running infra/check.sh and tests/it/terraform.rs
      # against a 6.x provider.
      version = ">= 5.0, < 6.0"
    }
  }
}
