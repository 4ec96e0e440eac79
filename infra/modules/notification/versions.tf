terraform {
  # 1.5: optional() object attributes with defaults, lifecycle pre/postconditions.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Checked (validate, checkov, LocalStack apply) against 5.100. Nothing
      # that 6.0 removes is used; this module reads
      # aws_region's `name`, which 6.x deprecates (a warning) but keeps, and
      # whose replacement (`region`) 5.x lacks.
      version = ">= 5.0"
    }
  }
}
