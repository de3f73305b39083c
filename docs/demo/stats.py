"""Small statistics helpers: the file the README's first command completes in."""


def mean(values):
    """The arithmetic mean of a non-empty list of numbers."""
    return sum(values) / len(values)


def variance(values):
    """The population variance of a non-empty list of numbers."""
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / len(values)


def standard_deviation(values):
    """The population standard deviation of a non-empty list of numbers."""
    
