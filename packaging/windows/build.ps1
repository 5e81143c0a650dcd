# Build DDPM Studio for Windows: the one-folder bundle, its self-test, and the NSIS installer.
# Run from the repository root in PowerShell, on Windows 10/11 x64 with Python 3.10-3.12 and NSIS 3
# (winget install NSIS.NSIS, or https://nsis.sourceforge.io):
#
#   py -3.11 -m venv .venv-win
#   .venv-win\Scripts\pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
#   .venv-win\Scripts\pip install -e . pyinstaller==6.22.3
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build.ps1 -Python .venv-win\Scripts\python.exe
#
# Output: dist\ddpm-gui\ (ddpm-gui.exe, ddpm-gui-cli.exe) and dist\ddpm-gui-<version>-setup.exe.
# NOT RUN on the Linux machine where this project is developed (the .nsi script compiles there with a
# stand-in bundle); see packaging\README.md.
param(
    [string]$Python = "python",
    [string]$MakeNsis = "makensis"
)
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")

$version = (Select-String -Path ddpm_gui\__init__.py -Pattern '__version__\s*=\s*"([^"]+)"').Matches[0].Groups[1].Value
Write-Host "DDPM Studio $version"

& $Python -c "import torch, sys; sys.exit('torch is a CUDA build: install the CPU build' if torch.version.cuda else 0)"
if ($LASTEXITCODE -ne 0) { throw "the build environment is not ready" }

$t = Get-Date
& $Python -m PyInstaller --noconfirm --distpath dist --workpath build\pyinstaller packaging\ddpm-gui.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
Write-Host ("bundle built in {0:N0} s" -f ((Get-Date) - $t).TotalSeconds)

# the console twin prints; the windowed ddpm-gui.exe has no console
& dist\ddpm-gui\ddpm-gui-cli.exe --self-test
if ($LASTEXITCODE -ne 0) { throw "the bundle's self-test failed" }

# the installer's icon (PyInstaller converts the PNG for the .exe itself, but leaves no .ico behind)
New-Item -ItemType Directory -Force build | Out-Null
& $Python -c "from PIL import Image; Image.open('resources/ddpm-gui.png').save('build/ddpm-gui.ico', sizes=[(16,16),(24,24),(32,32),(48,48),(64,64),(128,128),(256,256)])"

$t = Get-Date
& $MakeNsis "/DVERSION=$version" packaging\windows\ddpm-gui.nsi
if ($LASTEXITCODE -ne 0) { throw "makensis failed" }
Write-Host ("installer built in {0:N0} s" -f ((Get-Date) - $t).TotalSeconds)
Get-Item "dist\ddpm-gui-$version-setup.exe" | Select-Object Name, @{n = "MB"; e = { [math]::Round($_.Length / 1MB) } }
