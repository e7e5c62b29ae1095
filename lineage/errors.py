"""The one exception base every tritonflow layer raises for problems a user can act on."""


class TritonflowError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class RepositoryError(TritonflowError):
    """The model repository cannot be read or written as asked."""


class NotFound(RepositoryError):
    """A model, version or record is not in the repository."""
