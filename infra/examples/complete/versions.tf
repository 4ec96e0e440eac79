terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }

  # Configure your team's remote state here, e.g.
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "s3-ingest/vendor-drops.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, { Service = "s3-ingest" })
  }
}
