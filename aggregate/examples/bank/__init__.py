"""The ``bank-account`` example: open an account, deposit, withdraw."""
