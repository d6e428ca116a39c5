# Sourced by the GPU benchmark scripts: the environment every run on a lent GPU machine needs.
# Wheels the machine's image lacks (diffusers, pydantic, PyAV, FA3) travel in .whl*/ and are
# unpacked into $SITE; a SageAttention 2 build travels as .sage-built.tar.gz. NVLink multicast is
# kept off here and in every process started from here.
OUT=${OUT:-/tmp/wan22bot-bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SITE=/tmp/site
mkdir -p "$SITE"
for d in .whl .whl-fa3 .whl-av; do
    if compgen -G "$d/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$d"/*.whl
    fi
done
if [ -f .sage-built.tar.gz ] && [ ! -d "$SITE/sageattention" ]; then
    tar -xzf .sage-built.tar.gz -C "$SITE"
fi

random_rife() {
    mkdir -p /tmp/rife-random
    [ -f /tmp/rife-random/flownet.pkl ] || python3 -c "import torch; from wan22bot.interpolate import IFNet; torch.save(IFNet().state_dict(), '/tmp/rife-random/flownet.pkl')"
}
