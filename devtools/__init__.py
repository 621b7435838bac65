"""Development tools run from the checkout: local servers, the demo runner."""
