"""``python -m medicraft_monai.deploy.synthesize -i IN -o OUT -m BUNDLE`` (or the HOLOSCAN_* variables).

Absolute imports: a MAP runs this file as ``python /opt/holoscan/app``, outside the package.
"""

from medicraft_monai.deploy.synthesize.app import main

if __name__ == "__main__":
    main()
