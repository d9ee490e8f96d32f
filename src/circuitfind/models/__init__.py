"""Model loading: tracr programs (shipped weights); later, pretrained and self-trained models."""

import warnings

# TransformerLens 3 warns at every HookedTransformer(...) that the class is deprecated in favour of
# its TransformerBridge.  circuitfind builds its models that way on purpose (the engine reads
# HookedTransformer's weights), so the warning is silenced where circuitfind builds them, and only
# there: a HookedTransformer(...) in the user's own code still warns.
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning,
                        module=r"circuitfind\.")
