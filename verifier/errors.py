"""User-facing errors. The CLI prints their message as one line; anything else is a bug."""


class PopqornError(Exception):
    """Base class: a refusal the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 2


class ModelFileError(PopqornError):
    """The model file is missing, unreadable, too large, malformed or unsafe."""

    exit_code = 3


class UnsupportedOperator(PopqornError):
    """An ONNX op (or an attribute value of it) the front end cannot convert exactly."""

    exit_code = 4

    def __init__(self, op_type: str, opset: int | None, node_name: str, reason: str = "", domain: str = "") -> None:
        """`opset` is the version the model imports for the op's `domain` ("" = the default domain;
        None: the model imports none for it)."""
        self.op_type, self.opset, self.node_name, self.reason, self.domain = op_type, opset, node_name, reason, domain
        version = "no opset imported" if opset is None else f"opset {opset}"
        where = f"unsupported operator {op_type} ({f'domain {domain!r}, ' if domain else ''}{version}) at node {node_name!r}"
        super().__init__(f"{where}: {reason}" if reason else where)

    def __reduce__(self):
        # pickled with the constructor's arguments: worker processes (vnnlib, audit) send it back
        return type(self), (self.op_type, self.opset, self.node_name, self.reason, self.domain)


class InputError(PopqornError):
    """Inputs, labels or options that do not fit the model or the threat model."""

    exit_code = 5
