"""A real local control plane for the test suite: etcd, kube-apiserver, Argo, and a node agent.

See tests/cluster/README.md.
"""
