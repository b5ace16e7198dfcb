"""chainbill's off-chain half: chain access, the deployment manifest and, in later
versions, the indexer, keeper and reconciliation. Talks to the chain through web3.py only."""
