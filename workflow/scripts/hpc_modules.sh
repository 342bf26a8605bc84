# Sourced by training and evaluation jobs: `source hpc_modules.sh MODULE...` loads each environment
# module and stops the job, naming the module, if one cannot be loaded. It replaces Snakemake's
# env-modules wrapper (`module purge && module load ...; cmd`), which runs the command on when
# `module` is missing or a load fails, and whose purge drops the site's default modules (on
# Frontier the default programming environment and Slingshot libraries): nothing is purged here.
# On failure it returns 1, so `source hpc_modules.sh ... && cmd` never runs cmd.
case $- in *u*) _dchag_nounset=1 ;; *) _dchag_nounset= ;; esac
set +u  # Lmod's shell functions read unset variables
if ! type module >/dev/null 2>&1; then
    # batch shells that did not inherit the function: the usual Lmod and Environment Modules inits
    for _dchag_init in "${LMOD_PKG:-/usr/share/lmod/lmod}/init/bash" /usr/share/lmod/lmod/init/bash /etc/profile.d/modules.sh; do
        if [ -r "$_dchag_init" ]; then . "$_dchag_init"; break; fi
    done
fi
_dchag_status=0
if ! type module >/dev/null 2>&1; then
    echo "hpc modules: no 'module' command in this job's shell, so $* cannot be loaded; run from a login shell of the cluster, or set hpc.modules: [] when the environment already has them" >&2
    _dchag_status=1
fi
for _dchag_module in "$@"; do
    [ "$_dchag_status" = 0 ] || break
    if ! module load "$_dchag_module"; then
        echo "hpc modules: 'module load $_dchag_module' failed (module avail ${_dchag_module%%/*} lists the versions); set hpc.modules or the profile's hpc_modules" >&2
        _dchag_status=1
    fi
done
# every module still loaded once all are (a later load may swap out an earlier one: Lmod families)
for _dchag_module in "$@"; do
    [ "$_dchag_status" = 0 ] || break
    if ! module is-loaded "$_dchag_module"; then
        echo "hpc modules: $_dchag_module is not loaded after 'module load $*' (swapped out by a later one?)" >&2
        _dchag_status=1
    fi
done
if [ "$_dchag_status" = 0 ]; then
    # a CPE other than the default: its libraries before the defaults' (OLCF, PyTorch on Frontier)
    if [ -n "${CRAY_LD_LIBRARY_PATH:-}" ]; then export LD_LIBRARY_PATH="$CRAY_LD_LIBRARY_PATH:${LD_LIBRARY_PATH:-}"; fi
    echo "hpc modules: loaded $*"
fi
[ -n "$_dchag_nounset" ] && set -u
unset _dchag_module _dchag_init _dchag_nounset
return "$_dchag_status"
