"""The privacy audit (``--audit M``): canaries in the clients' DP-SGD, scored from the device updates the server
receives, and the one-run lower bound on epsilon they give."""
