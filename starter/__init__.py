"""The starter pack `tritonflow init DIR` copies: a flow, a client, synthetic data and a README.

Shipped as package data so it works from a wheel; `flows/fraud_flow.py` shares its data maker.
"""

from pathlib import Path

FILES = ("flow.py", "client.py", "fraud_data.py", "README.md")
HERE = Path(__file__).parent
