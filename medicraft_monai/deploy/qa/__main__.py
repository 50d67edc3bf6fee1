"""``python -m medicraft_monai.deploy.qa -i IN -o OUT -m MODELS`` (or HOLOSCAN_INPUT_PATH/OUTPUT_PATH/MODEL_PATH).

Absolute imports: a MAP runs this file as ``python /opt/holoscan/app``, outside the package.
"""

from medicraft_monai.deploy.qa.app import main

if __name__ == "__main__":
    main()
