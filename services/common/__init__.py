"""What every unigap gRPC server shares: settings, auth, metrics, validation, models, serving (import the modules)."""
