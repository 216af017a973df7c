"""Other people's checkpoints: read state_dict files, compare two of them, import OpenLTH runs."""
