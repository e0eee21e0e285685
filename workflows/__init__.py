"""Hera source of fedtwin's Argo WorkflowTemplates; `make workflows` renders them to `rendered/`."""
