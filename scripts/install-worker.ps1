<#
.SYNOPSIS
  Installs a seedfarm worker on this Windows PC: Python (through uv), the CUDA build of torch,
  seedfarm, this PC's worker config, and a scheduled task that starts the worker at logon.

.DESCRIPTION
  Run from a seedfarm checkout or an unpacked release (the folder holding pyproject.toml):
    powershell -ExecutionPolicy Bypass -File scripts\install-worker.ps1
  It asks for what it is not given:
    -RedisUrl    the farm's Redis, e.g. redis://:PASSWORD@192.168.1.10:6379/0
    -ModelsDir   your A1111 or ComfyUI models folder, e.g. D:\sd\stable-diffusion-webui\models
    -Name        this worker's name in `farm workers` (default: the PC's name)
    -Games       programs that pause the worker while they run, e.g. "eldenring.exe,cs2.exe"
    -NoPauseWhenBusy  keep rendering while a game uses the GPU (default: step aside)
    -NoStartup   do not register the worker to start at logon
  Safe to run again: it upgrades seedfarm and rewrites the config.
  docs/deploy.md ("Windows") walks through it; its config logic is `farm setup` (tested on Linux).
#>
[CmdletBinding()]
param(
    [string]$RedisUrl,
    [string]$ModelsDir,
    [string]$Name = $env:COMPUTERNAME,
    [string]$Games = "",
    [switch]$NoPauseWhenBusy,
    [switch]$NoStartup
)
$ErrorActionPreference = "Stop"
$Source = Split-Path -Parent $PSScriptRoot
if (-not (Test-Path (Join-Path $Source "pyproject.toml"))) {
    throw "Run this script from a seedfarm folder: $Source has no pyproject.toml"
}

# 1. uv, which brings its own Python: nothing else to install first.
if (-not (Get-Command uv -ErrorAction SilentlyContinue)) {
    Write-Host "Installing uv (Python installer) ..."
    Invoke-RestMethod https://astral.sh/uv/install.ps1 | Invoke-Expression
    $env:Path = "$env:USERPROFILE\.local\bin;$env:Path"
}

# 2. seedfarm with the CUDA build of torch that fits this PC's driver, at the tested versions.
Write-Host "Installing seedfarm and the CUDA build of torch (a few GB, once) ..."
$Constraints = Join-Path $Source "constraints\worker.txt"
uv tool install --force --python 3.11 --torch-backend auto -c $Constraints "$Source[worker]"
if ($LASTEXITCODE -ne 0) { throw "uv tool install failed (see above)" }
# spandrel (upscaler models) without the torchvision it declares: that would replace the CUDA torch
$ToolPython = Join-Path (uv tool dir) "seedfarm\Scripts\python.exe"
uv pip install --python $ToolPython --no-deps -r (Join-Path $Source "constraints\no-deps.txt")
if ($LASTEXITCODE -ne 0) { throw "installing spandrel failed (see above)" }
uv tool update-shell | Out-Null
$Farm = Join-Path (uv tool dir --bin) "farm.exe"

# 3. This PC's settings: the farm's Redis and the models folder.
while (-not $RedisUrl) { $RedisUrl = Read-Host "The farm's Redis URL (redis://:PASSWORD@HOST:6379/0)" }
while (-not $ModelsDir) { $ModelsDir = Read-Host "Your A1111 or ComfyUI models folder" }
$SetupArgs = @("setup", "--broker", $RedisUrl, "--models", $ModelsDir, "--name", $Name)
if (-not $NoPauseWhenBusy) { $SetupArgs += "--pause-when-busy" }
if ($Games) { $SetupArgs += @("--games", $Games) }
$Config = & $Farm @SetupArgs
if ($LASTEXITCODE -ne 0) { throw "farm setup refused the settings (see above); run the script again" }
Write-Host "Wrote $Config"

# 4. Start at logon, in a console window that shows the worker's status lines.
if (-not $NoStartup) {
    $Action = New-ScheduledTaskAction -Execute "powershell.exe" `
        -Argument "-NoExit -Command `"& '$Farm' worker`""
    $Trigger = New-ScheduledTaskTrigger -AtLogOn -User "$env:USERDOMAIN\$env:USERNAME"
    $Settings = New-ScheduledTaskSettingsSet -AllowStartIfOnBatteries -ExecutionTimeLimit ([TimeSpan]::Zero)
    Register-ScheduledTask -TaskName "seedfarm worker" -Action $Action -Trigger $Trigger `
        -Settings $Settings -Force | Out-Null
    Write-Host "The worker starts at logon (Task Scheduler: 'seedfarm worker'). Starting it now ..."
    Start-ScheduledTask -TaskName "seedfarm worker"
}
& $Farm --version
Write-Host "Done. Check from any PC: farm workers --broker $RedisUrl"
